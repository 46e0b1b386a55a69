-- Projections in depth: what a document reflects, and where a projection's targets live.
--
-- Every document records the event it reflects last: its stream, its position in that
-- stream and its global position (a multi-stream document, keyed by id(event), names the
-- stream of the last event folded into it).
ALTER TABLE tide_documents
    ADD COLUMN IF NOT EXISTS last_stream_id       text,
    ADD COLUMN IF NOT EXISTS last_stream_position bigint,
    ADD COLUMN IF NOT EXISTS last_global_position bigint;

-- Blue-green rebuilds. A projection's targets (its document collection, the tables it names
-- with sql:table) are physically NAME || target_suffix. A processor never rebuilt has the
-- suffix '' (its targets are the plain names, as before); a rebuild to version V builds into
-- NAME__vV and, once it has caught up, makes that what readers see in one transaction:
-- a table NAME becomes a view of NAME__vV, and a collection is looked up in tide_targets.
ALTER TABLE tide_processors ADD COLUMN IF NOT EXISTS target_suffix text NOT NULL DEFAULT '';

-- Every physical target a rebuild made, and which one readers see (live) under its public
-- name when it is not the name itself. A building generation registers its targets here as
-- it first writes them (not live); the switch makes them live and drops the old ones.
CREATE TABLE IF NOT EXISTS tide_targets (
    kind         text    NOT NULL CHECK (kind IN ('collection', 'table')),
    physical     text    NOT NULL,
    name         text    NOT NULL,
    processor_id text    NOT NULL,
    live         boolean NOT NULL DEFAULT false,
    PRIMARY KEY (kind, physical)
);
CREATE UNIQUE INDEX IF NOT EXISTS tide_targets_live ON tide_targets (kind, name) WHERE live;

-- The collection readers see under a public name.
CREATE OR REPLACE FUNCTION tide_collection(p_name text) RETURNS text
LANGUAGE sql STABLE AS $tide_collection$
    SELECT COALESCE((SELECT physical FROM tide_targets
                      WHERE kind = 'collection' AND name = p_name AND live), p_name);
$tide_collection$;
