-- Blue-green rebuilds. A projection whose version changes (or `tide rebuild NAME`) is built
-- again from the start of the log by a builder: a processor of its own, APP/NAME@rebuild,
-- with its own lease and checkpoint, writing into fresh targets (NAME || suffix, see 0007)
-- while the running version keeps serving reads and keeping up. When the builder has caught
-- up, tide_rebuild_switch makes its targets what readers see, in one transaction.

-- A builder's row says whose rebuild it is and how far it got (`tide status` shows it).
ALTER TABLE tide_processors
    ADD COLUMN IF NOT EXISTS rebuild_of         text,
    ADD COLUMN IF NOT EXISTS rebuild_done       bigint,
    ADD COLUMN IF NOT EXISTS rebuild_total      bigint,
    ADD COLUMN IF NOT EXISTS rebuild_rate       double precision,
    ADD COLUMN IF NOT EXISTS rebuild_started_at timestamptz;

-- Makes the builder p_builder's work that of processor p_id at version p_version: its
-- checkpoint becomes p_id's, its targets (registered in tide_targets as NAME || p_suffix)
-- become what readers see — a table NAME turns into a view of the new table, a collection
-- NAME resolves to the new one (tide_collection) — and the old targets are dropped, unless
-- p_keep (then they stay, registered, not live). Takes p_id's row FOR UPDATE first: inline
-- appenders hold it FOR SHARE, so none is half-way through writing while it switches.
CREATE OR REPLACE FUNCTION tide_rebuild_switch(
    p_id text, p_builder text, p_partition text, p_version int, p_suffix text, p_keep boolean
) RETURNS TABLE (old_version int, old_suffix text, targets int)
LANGUAGE plpgsql AS $tide_rebuild_switch$
DECLARE
    v_version int;
    v_suffix  text;
    v_count   int := 0;
    v_old     text;
    v_kind    "char";
    t         record;
BEGIN
    SELECT p.version, p.target_suffix INTO v_version, v_suffix
      FROM tide_processors p WHERE p.processor_id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'processor % has no row to switch', p_id USING ERRCODE = '55000';
    END IF;
    IF v_suffix = p_suffix AND v_version = p_version THEN
        -- Switched already (the reply of an earlier call was lost with its connection).
        RETURN QUERY SELECT v_version, v_suffix, 0;
        RETURN;
    ELSIF v_suffix = p_suffix THEN
        RAISE EXCEPTION 'processor % already reads from targets with suffix %', p_id, p_suffix
            USING ERRCODE = '55000';
    END IF;

    INSERT INTO emt_processors AS e (processor_id, partition, version, status,
                                     last_processed_checkpoint, last_processed_transaction_id,
                                     processor_instance_id)
    SELECT p_id, b.partition, p_version, 'running', b.last_processed_checkpoint,
           b.last_processed_transaction_id, b.processor_instance_id
      FROM emt_processors b
     WHERE b.processor_id = p_builder AND b.partition = p_partition AND b.version = p_version
    ON CONFLICT (processor_id, partition, version) DO UPDATE
        SET last_processed_checkpoint = excluded.last_processed_checkpoint,
            last_processed_transaction_id = excluded.last_processed_transaction_id,
            last_updated = now();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'rebuild % has no checkpoint at version % in partition %', p_builder,
            p_version, p_partition USING ERRCODE = '55000';
    END IF;

    FOR t IN SELECT * FROM tide_targets
              WHERE processor_id = p_id AND physical = name || p_suffix ORDER BY kind, name
    LOOP
        v_count := v_count + 1;
        v_old := t.name || v_suffix; -- what readers saw until now
        IF t.kind = 'table' THEN
            SELECT c.relkind INTO v_kind FROM pg_class c
             WHERE c.oid = to_regclass(format('%I', t.name));
            IF v_kind = 'v' THEN -- a view of an earlier rebuild's table
                EXECUTE format('DROP VIEW %I', t.name);
            ELSIF v_kind IN ('r', 'p') AND p_keep THEN -- the table of a processor never rebuilt
                v_old := t.name || '__v' || v_version;
                EXECUTE format('ALTER TABLE %I RENAME TO %I', t.name, v_old);
            ELSIF v_kind IS NOT NULL AND v_kind NOT IN ('r', 'p') THEN
                RAISE EXCEPTION 'cannot make % a view of %: it is neither a table nor a view',
                    t.name, t.physical USING ERRCODE = '42809';
            END IF;
            IF NOT p_keep THEN
                EXECUTE format('DROP TABLE IF EXISTS %I', v_old);
            END IF;
            EXECUTE format('CREATE VIEW %I AS SELECT * FROM %I', t.name, t.physical);
        ELSIF NOT p_keep THEN
            DELETE FROM tide_documents WHERE collection = v_old;
        END IF;
        UPDATE tide_targets SET live = false WHERE kind = t.kind AND name = t.name AND live;
        IF p_keep THEN
            INSERT INTO tide_targets (kind, physical, name, processor_id)
            VALUES (t.kind, v_old, t.name, p_id) ON CONFLICT (kind, physical) DO NOTHING;
        ELSE
            DELETE FROM tide_targets WHERE kind = t.kind AND physical = v_old;
        END IF;
        UPDATE tide_targets SET live = true WHERE kind = t.kind AND physical = t.physical;
    END LOOP;

    UPDATE tide_processors
       SET version = p_version, target_suffix = p_suffix, updated_at = now()
     WHERE processor_id = p_id;
    UPDATE tide_dead_letters SET processor_id = p_id WHERE processor_id = p_builder;
    DELETE FROM emt_processors WHERE processor_id = p_builder;
    DELETE FROM tide_processors WHERE processor_id = p_builder;
    RETURN QUERY SELECT v_version, v_suffix, v_count;
END;
$tide_rebuild_switch$;

-- The first statement of every batch of a running processor: takes its row FOR SHARE (so a
-- switch waits for the batch, and a batch started after a switch sees it) and refuses to go
-- on writing targets that a rebuild has replaced: 40001, as when its checkpoint moved, and
-- the daemon claims again to learn the new ones. Batches and the switch take the row before
-- any target, so neither waits for the other in a cycle.
CREATE OR REPLACE FUNCTION tide_processor_enter(p_id text, p_suffix text) RETURNS void
LANGUAGE plpgsql AS $tide_processor_enter$
DECLARE
    v_suffix text;
BEGIN
    SELECT target_suffix INTO v_suffix FROM tide_processors
     WHERE processor_id = p_id FOR SHARE;
    IF FOUND AND v_suffix <> p_suffix THEN
        RAISE EXCEPTION 'processor % was rebuilt: its targets are now those with suffix "%"',
            p_id, v_suffix USING ERRCODE = '40001';
    END IF;
END;
$tide_processor_enter$;
