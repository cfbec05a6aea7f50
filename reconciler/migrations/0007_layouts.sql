-- Big months (docs/operations.md, "Table layouts"): fresh planner statistics after every write,
-- and the opt-in partitioned layout, where a write makes a staging table (stage_month,
-- committed), then in one transaction loads it, builds its indexes and statistics
-- (finish_stage) and swaps it in as the month's partition (swap_month).
--
-- The writer role still owns nothing and has no DDL rights. What it may not do itself runs
-- through the SECURITY DEFINER functions below, owned by the role that runs the migrations:
-- each accepts only a table registered in ranking.signal_tables (by `reconciler migrate`, from
-- the configuration) and a valid month, pins search_path, and quotes every identifier.

CREATE TABLE IF NOT EXISTS ranking.signal_tables (
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    PRIMARY KEY (schema_name, table_name)
);
INSERT INTO ranking.signal_tables VALUES
    ('ranking', 'ranking_signal'), ('ranking', 'composite_signal_daily')
    ON CONFLICT DO NOTHING;
GRANT SELECT ON ranking.signal_tables TO ranking_writer, ranking_reader, ranking_reconciler;

-- A registered signal table (plain or partitioned), or an error. Internal.
CREATE OR REPLACE FUNCTION ranking.registered_table(p_schema text, p_table text, p_month text)
RETURNS regclass
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found regclass;
BEGIN
    IF p_month IS NOT NULL AND p_month !~ '^[0-9]{4}-(0[1-9]|1[0-2])$' THEN
        RAISE EXCEPTION 'not a month: %', p_month USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM ranking.signal_tables
                   WHERE schema_name = p_schema AND table_name = p_table) THEN
        RAISE EXCEPTION 'not a registered signal table: %.%', p_schema, p_table
            USING ERRCODE = '42501', HINT = 'run reconciler migrate with this table configured';
    END IF;
    SELECT c.oid INTO found
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = p_schema AND c.relname = p_table AND c.relkind IN ('r', 'p');
    IF found IS NULL THEN
        RAISE EXCEPTION 'no table %.%', p_schema, p_table USING ERRCODE = '42P01';
    END IF;
    RETURN found;
END
$$;

-- ANALYZE of a plain signal table, for servers before Postgres 17 (which grant MAINTAIN).
CREATE OR REPLACE FUNCTION ranking.analyze_signal_table(p_schema text, p_table text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found regclass := ranking.registered_table(p_schema, p_table, NULL);
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = found) <> 'r' THEN
        RAISE EXCEPTION '%.% is partitioned: its writes analyze each new partition', p_schema, p_table
            USING ERRCODE = '42809';
    END IF;
    EXECUTE format('ANALYZE %s', found);
END
$$;

-- The staging tables stage_month made and nothing has swapped in or dropped yet. A write that
-- died between its load and its swap leaves one here; stage_month drops those a day old.
CREATE TABLE IF NOT EXISTS ranking.staging_tables (
    relid       oid         PRIMARY KEY,
    schema_name text        NOT NULL,
    table_name  text        NOT NULL,
    year_month  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A staging table of this table and month, as stage_month registered it, or an error. Internal.
CREATE OR REPLACE FUNCTION ranking.registered_stage(
    p_schema text, p_table text, p_month text, p_staging text)
RETURNS regclass
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found regclass;
BEGIN
    SELECT s.relid::regclass INTO found
      FROM ranking.staging_tables s
      JOIN pg_class c ON c.oid = s.relid JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE s.schema_name = p_schema AND s.table_name = p_table AND s.year_month = p_month
       AND n.nspname = p_schema AND c.relname = p_staging AND NOT c.relispartition;
    IF found IS NULL THEN
        RAISE EXCEPTION 'not a staging table of %.% %: %', p_schema, p_table, p_month, p_staging
            USING ERRCODE = '42501';
    END IF;
    RETURN found;
END
$$;

-- A fresh staging table for one month of a partitioned signal table, for the writer to load.
CREATE OR REPLACE FUNCTION ranking.stage_month(p_schema text, p_table text, p_month text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parent  regclass := ranking.registered_table(p_schema, p_table, p_month);
    staging text;
    stale   record;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = parent) <> 'p' THEN
        RAISE EXCEPTION '%.% is not partitioned', p_schema, p_table USING ERRCODE = '42809';
    END IF;
    FOR stale IN DELETE FROM ranking.staging_tables
                  WHERE schema_name = p_schema AND table_name = p_table
                    AND created_at < now() - interval '1 day' RETURNING relid LOOP
        IF EXISTS (SELECT 1 FROM pg_class WHERE oid = stale.relid AND NOT relispartition) THEN
            EXECUTE format('DROP TABLE %s', stale.relid::regclass);
        END IF;
    END LOOP;
    staging := format('%s_stage_%s_%s', left(p_table, 40), replace(p_month, '-', ''),
                      left(md5(random()::text || clock_timestamp()::text), 8));
    EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
                   ' INCLUDING STORAGE INCLUDING COMPRESSION)', p_schema, staging, parent);
    -- The partition bound as a constraint: ATTACH then needs no scan of the rows.
    EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT month_bound CHECK (year_month = %L)',
                   p_schema, staging, p_month);
    EXECUTE format('GRANT SELECT, INSERT ON %I.%I TO ranking_writer', p_schema, staging);
    INSERT INTO ranking.staging_tables (relid, schema_name, table_name, year_month)
    VALUES (format('%I.%I', p_schema, staging)::regclass, p_schema, p_table, p_month);
    RETURN staging;
END
$$;

-- After the load: the parent's indexes built on the staging table, and its statistics.
CREATE OR REPLACE FUNCTION ranking.finish_stage(
    p_schema text, p_table text, p_month text, p_staging text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parent regclass := ranking.registered_table(p_schema, p_table, p_month);
    staged regclass := ranking.registered_stage(p_schema, p_table, p_month, p_staging);
    idx    record;
BEGIN
    EXECUTE format('REVOKE ALL ON %s FROM ranking_writer', staged);  -- loaded: no more rows
    FOR idx IN SELECT i.indisunique, pg_get_indexdef(i.indexrelid) AS def
                 FROM pg_index i WHERE i.indrelid = parent LOOP
        EXECUTE format('CREATE %sINDEX ON %s%s', CASE WHEN idx.indisunique THEN 'UNIQUE ' END,
                       staged, substring(idx.def FROM ' USING .*$'));
    END LOOP;
    EXECUTE format('ANALYZE %s', staged);
END
$$;

-- Swaps the finished staging table in as the month's partition, the old one detached and
-- dropped, under the month's writer lock. Readers wait from the detach to the commit: the
-- writer runs it last, with a lock_timeout, retried from a savepoint.
CREATE OR REPLACE FUNCTION ranking.swap_month(
    p_schema text, p_table text, p_month text, p_staging text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parent    regclass := ranking.registered_table(p_schema, p_table, p_month);
    staged    regclass := ranking.registered_stage(p_schema, p_table, p_month, p_staging);
    old_part  regclass;
    part_name text := format('%s_%s', left(p_table, 50), replace(p_month, '-', ''));
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(p_schema || '.' || p_table),
                                  replace(p_month, '-', '')::integer);
    SELECT i.inhrelid INTO old_part
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = parent
       AND pg_get_expr(c.relpartbound, c.oid) = format('FOR VALUES IN (%L)', p_month);
    IF old_part IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', parent, old_part);
        EXECUTE format('DROP TABLE %s', old_part);
    END IF;
    EXECUTE format('REVOKE ALL ON %s FROM ranking_writer', staged);
    EXECUTE format('ALTER TABLE %s RENAME TO %I', staged, part_name);
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s FOR VALUES IN (%L)', parent, staged, p_month);
    DELETE FROM ranking.staging_tables WHERE relid = staged;
END
$$;

-- A staging table given up (its write failed).
CREATE OR REPLACE FUNCTION ranking.drop_stage(
    p_schema text, p_table text, p_month text, p_staging text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    staged regclass := ranking.registered_stage(p_schema, p_table, p_month, p_staging);
BEGIN
    DELETE FROM ranking.staging_tables WHERE relid = staged;
    EXECUTE format('DROP TABLE %s', staged);
END
$$;

REVOKE ALL ON FUNCTION ranking.registered_table(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ranking.registered_stage(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ranking.analyze_signal_table(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ranking.stage_month(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ranking.finish_stage(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ranking.swap_month(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ranking.drop_stage(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ranking.analyze_signal_table(text, text) TO ranking_writer;
GRANT EXECUTE ON FUNCTION ranking.stage_month(text, text, text) TO ranking_writer;
GRANT EXECUTE ON FUNCTION ranking.finish_stage(text, text, text, text) TO ranking_writer;
GRANT EXECUTE ON FUNCTION ranking.swap_month(text, text, text, text) TO ranking_writer;
GRANT EXECUTE ON FUNCTION ranking.drop_stage(text, text, text, text) TO ranking_writer;
