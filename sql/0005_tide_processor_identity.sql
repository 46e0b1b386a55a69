-- Processor identities. A processor's id is APP/NAME (the app of `tide run`, by default
-- its directory's name, and the script's file name), and its row remembers which script
-- of which kind claimed it. A claim by another script under the same id is refused unless
-- it says it takes the processor over: two apps that both have a cart_summary.lua no
-- longer share (and corrupt) one checkpoint without a word.
ALTER TABLE tide_processors ADD COLUMN IF NOT EXISTS app text;

DROP FUNCTION IF EXISTS tide_processor_claim(text, text, int, text, int, text);

-- p_script is the script's real path. A row from before app names (id = NAME, no app) is
-- adopted — renamed APP/NAME with its checkpoint and dead letters — when it was run by
-- the same script (its path as then given is p_given or p_script), or on p_takeover.
-- refused: why the claim was refused (acquired is then false), else NULL.
CREATE OR REPLACE FUNCTION tide_processor_claim(
    p_id text, p_kind text, p_version int, p_owner text, p_ttl_ms int, p_partition text,
    p_app text, p_name text, p_script text, p_given text, p_takeover boolean
) RETURNS TABLE (acquired boolean, transaction_id xid8, global_position bigint, rebuilt boolean,
                 attempt_at text, attempt_events int, attempts int, attempt_error text,
                 attempt_script text, retries bigint, refused text)
LANGUAGE plpgsql AS $tide_processor_claim$
DECLARE
    v_old_version   int;
    v_old_partition text;
    v_kind          text;
    v_script        text;
    v_until         timestamptz := now() + make_interval(secs => p_ttl_ms / 1000.0);
    v_refused       text;
BEGIN
    PERFORM tide_ensure_partition(p_partition);
    -- A row from before app names, while this id has no checkpoint of its own yet.
    SELECT p.kind, p.script INTO v_kind, v_script
      FROM tide_processors p
     WHERE p.processor_id = p_name AND p.app IS NULL AND p_name <> p_id
       AND NOT EXISTS (SELECT 1 FROM emt_processors e WHERE e.processor_id = p_id);
    IF FOUND THEN
        IF p_takeover OR v_script IN (p_script, p_given) THEN
            DELETE FROM tide_processors WHERE processor_id = p_id; -- a status row at most
            UPDATE tide_processors SET processor_id = p_id, app = p_app, script = p_script
             WHERE processor_id = p_name;
            UPDATE emt_processors SET processor_id = p_id WHERE processor_id = p_name;
            UPDATE tide_dead_letters SET processor_id = p_id WHERE processor_id = p_name;
        ELSE
            v_refused := format('processor %s was run by %s (a %s) before processors had app '
                                'names; this is %s (a %s). To go on from its checkpoint: '
                                'tide run --take-over %s; to start afresh: tide forget %s',
                                p_name, coalesce(v_script, 'another script'), v_kind, p_script,
                                p_kind, p_id, p_name);
        END IF;
    END IF;
    SELECT p.version, p.partition, p.kind, p.script
      INTO v_old_version, v_old_partition, v_kind, v_script
      FROM tide_processors p WHERE p.processor_id = p_id;
    IF FOUND AND v_refused IS NULL AND NOT p_takeover
       AND (v_script IS DISTINCT FROM p_script AND v_script IS NOT NULL
            OR v_kind NOT IN (p_kind, 'unknown')) THEN
        v_refused := format('processor %s belongs to %s (a %s), not to %s (a %s). To let this '
                            'script take it over, with its checkpoint: tide run --take-over %s; '
                            'to start afresh: tide forget %s', p_id, v_script, v_kind, p_script,
                            p_kind, p_id, p_id);
    END IF;
    IF v_refused IS NOT NULL THEN
        RETURN QUERY SELECT false, NULL::xid8, NULL::bigint, false, NULL::text, 0, 0,
                            NULL::text, NULL::text, 0::bigint, v_refused;
        RETURN;
    END IF;
    INSERT INTO tide_processors AS p (processor_id, kind, version, partition, owner,
                                      lease_until, seen_until, status, app, script)
    VALUES (p_id, p_kind, p_version, p_partition, p_owner, v_until, v_until, 'running', p_app,
            p_script)
    ON CONFLICT (processor_id) DO UPDATE
        SET owner = excluded.owner, lease_until = excluded.lease_until,
            seen_until = excluded.seen_until, kind = excluded.kind,
            version = excluded.version, partition = excluded.partition,
            app = excluded.app, script = excluded.script,
            status = CASE WHEN p.owner IS DISTINCT FROM excluded.owner
                            OR p.status IN ('stopped', 'waiting')
                          THEN 'running' ELSE p.status END,
            attempt_at = CASE WHEN p.version = excluded.version
                               AND p.partition = excluded.partition
                              THEN p.attempt_at END,
            attempts = CASE WHEN p.version = excluded.version
                             AND p.partition = excluded.partition
                            THEN p.attempts ELSE 0 END,
            updated_at = now()
        WHERE p.owner IS NULL OR p.owner = excluded.owner OR p.lease_until < now();
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, NULL::xid8, NULL::bigint, false, NULL::text, 0, 0,
                            NULL::text, NULL::text, 0::bigint, NULL::text;
        RETURN;
    END IF;
    INSERT INTO emt_processors AS e (processor_id, partition, version, status,
                                     last_processed_checkpoint, last_processed_transaction_id,
                                     processor_instance_id)
    VALUES (p_id, p_partition, p_version, 'running', lpad('0', 19, '0'), '0', p_owner)
    ON CONFLICT (processor_id, partition, version) DO UPDATE
        SET status = 'running', processor_instance_id = p_owner, last_updated = now();
    RETURN QUERY
        SELECT true, e.last_processed_transaction_id, e.last_processed_checkpoint::bigint,
               v_old_version IS NOT NULL AND v_old_version <> p_version,
               t.attempt_at, t.attempt_events, t.attempts, t.attempt_error, t.attempt_script,
               (SELECT count(*) FROM tide_dead_letters d
                 WHERE d.processor_id = p_id AND d.partition = p_partition
                   AND d.status = 'retry'),
               NULL::text
          FROM emt_processors e, tide_processors t
         WHERE e.processor_id = p_id AND e.partition = p_partition AND e.version = p_version
           AND t.processor_id = p_id;
END;
$tide_processor_claim$;

-- Forgets a processor: its lease and status, its checkpoints (every version and
-- partition) and its dead letters. Refused while a daemon holds it. Returns the rows
-- removed from each table.
CREATE OR REPLACE FUNCTION tide_processor_forget(p_id text)
RETURNS TABLE (processors bigint, checkpoints bigint, dead_letters bigint)
LANGUAGE plpgsql AS $tide_processor_forget$
DECLARE
    v_owner text;
    v_p bigint;
    v_c bigint;
    v_d bigint;
BEGIN
    SELECT p.owner INTO v_owner FROM tide_processors p
     WHERE p.processor_id = p_id AND p.owner IS NOT NULL AND p.lease_until >= now()
       FOR UPDATE;
    IF FOUND THEN
        RAISE EXCEPTION 'processor % is running (held by %): stop that daemon or remove the script first',
            p_id, v_owner USING ERRCODE = '55006';
    END IF;
    DELETE FROM tide_processors WHERE processor_id = p_id;
    GET DIAGNOSTICS v_p = ROW_COUNT;
    DELETE FROM emt_processors WHERE processor_id = p_id;
    GET DIAGNOSTICS v_c = ROW_COUNT;
    DELETE FROM tide_dead_letters WHERE processor_id = p_id;
    GET DIAGNOSTICS v_d = ROW_COUNT;
    RETURN QUERY SELECT v_p, v_c, v_d;
END;
$tide_processor_forget$;
