-- Runs once, when the postgres container creates its data directory.
-- Grafana reads the raw rows with a read-only role; the app owns the table.
CREATE ROLE grafana_reader LOGIN PASSWORD 'grafana_reader';
GRANT CONNECT ON DATABASE usage TO grafana_reader;
GRANT USAGE ON SCHEMA public TO grafana_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO grafana_reader;
-- Tables the app creates later (flask_usage) are readable too.
ALTER DEFAULT PRIVILEGES FOR ROLE usage IN SCHEMA public GRANT SELECT ON TABLES TO grafana_reader;
