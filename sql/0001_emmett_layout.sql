-- The core tables in the layout of @event-driven-io/emmett-postgresql 0.42, so that Emmett
-- and tide can share one database and either may create it first. Everything is
-- "if not exists": on a database Emmett already set up this changes nothing.
-- Partitions are created directly (not through Emmett's emt_* functions, which tide must
-- neither define nor depend on), with the names Emmett gives them.

CREATE TABLE IF NOT EXISTS emt_streams (
    stream_id       text    NOT NULL,
    stream_position bigint  NOT NULL,
    partition       text    NOT NULL DEFAULT 'emt:default',
    stream_type     text    NOT NULL,
    stream_metadata jsonb   NOT NULL,
    is_archived     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (stream_id, partition, is_archived)
) PARTITION BY LIST (partition);

CREATE UNIQUE INDEX IF NOT EXISTS idx_streams_unique
    ON emt_streams (stream_id, partition, is_archived) INCLUDE (stream_position);

CREATE SEQUENCE IF NOT EXISTS emt_global_message_position;

CREATE TABLE IF NOT EXISTS emt_messages (
    stream_position        bigint      NOT NULL,
    global_position        bigint      DEFAULT nextval('emt_global_message_position'),
    transaction_id         xid8        NOT NULL,
    created                timestamptz NOT NULL DEFAULT now(),
    is_archived            boolean     NOT NULL DEFAULT false,
    message_kind           varchar(1)  NOT NULL DEFAULT 'E',
    stream_id              text        NOT NULL,
    partition              text        NOT NULL DEFAULT 'emt:default',
    message_schema_version text        NOT NULL,
    message_id             text        NOT NULL,
    message_type           text        NOT NULL,
    message_data           jsonb       NOT NULL,
    message_metadata       jsonb       NOT NULL,
    PRIMARY KEY (stream_id, stream_position, partition, is_archived)
) PARTITION BY LIST (partition);

CREATE TABLE IF NOT EXISTS emt_projections (
    version      int         NOT NULL DEFAULT 1,
    type         varchar(1)  NOT NULL,
    name         text        NOT NULL,
    partition    text        NOT NULL DEFAULT 'emt:default',
    kind         text        NOT NULL,
    status       text        NOT NULL,
    definition   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_updated timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, partition, version)
) PARTITION BY LIST (partition);

CREATE TABLE IF NOT EXISTS emt_processors (
    last_processed_transaction_id xid8        NOT NULL,
    version                       int         NOT NULL DEFAULT 1,
    processor_id                  text        NOT NULL,
    partition                     text        NOT NULL DEFAULT 'emt:default',
    status                        text        NOT NULL DEFAULT 'stopped',
    last_processed_checkpoint     text        NOT NULL,
    processor_instance_id         text        DEFAULT 'emt:unknown',
    created_at                    timestamptz NOT NULL DEFAULT now(),
    last_updated                  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (processor_id, partition, version)
) PARTITION BY LIST (partition);

-- Creates the partitions of one partition value, named as Emmett names them
-- (table || '_' || value, every character outside [A-Za-z0-9_] replaced by '_').
CREATE OR REPLACE FUNCTION tide_add_partition(p_partition text) RETURNS void
LANGUAGE plpgsql AS $tide_add_partition$
DECLARE
    v_table text;
    v_name  text;
BEGIN
    FOREACH v_table IN ARRAY ARRAY['emt_messages', 'emt_streams'] LOOP
        v_name := regexp_replace(v_table || '_' || p_partition, '[^a-zA-Z0-9_]', '_', 'g');
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES IN (%L) '
                       'PARTITION BY LIST (is_archived)', v_name, v_table, p_partition);
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES IN (false)',
                       v_name || '_active', v_name);
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES IN (true)',
                       v_name || '_archived', v_name);
    END LOOP;
    FOREACH v_table IN ARRAY ARRAY['emt_processors', 'emt_projections'] LOOP
        v_name := regexp_replace(v_table || '_' || p_partition, '[^a-zA-Z0-9_]', '_', 'g');
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES IN (%L)',
                       v_name, v_table, p_partition);
    END LOOP;
END;
$tide_add_partition$;

SELECT tide_add_partition('emt:default');
