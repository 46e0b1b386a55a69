-- What `tide run` needs: processor leases and status, document collections, and a
-- notification on every insert into emt_messages (also Emmett's) to wake idle consumers.

-- One row per processor: who holds it (lease) and what the daemon last reported.
-- The checkpoint itself lives in emt_processors, where Emmett's tools look for it.
CREATE TABLE IF NOT EXISTS tide_processors (
    processor_id text        PRIMARY KEY,
    kind         text        NOT NULL,
    version      int         NOT NULL DEFAULT 1,
    partition    text        NOT NULL DEFAULT 'emt:default',
    owner        text,
    lease_until  timestamptz,
    status       text        NOT NULL DEFAULT 'stopped',
    generation   int         NOT NULL DEFAULT 0,
    script       text,
    last_error   text,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Document projections: one JSONB document per (collection, id).
CREATE TABLE IF NOT EXISTS tide_documents (
    collection text        NOT NULL,
    id         text        NOT NULL,
    doc        jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection, id)
);

CREATE OR REPLACE FUNCTION tide_notify_messages() RETURNS trigger
LANGUAGE plpgsql AS $tide_notify_messages$
BEGIN
    PERFORM pg_notify('tide_messages', '');
    RETURN NULL;
END;
$tide_notify_messages$;

DROP TRIGGER IF EXISTS tide_notify_messages ON emt_messages;
CREATE TRIGGER tide_notify_messages AFTER INSERT ON emt_messages
    FOR EACH STATEMENT EXECUTE FUNCTION tide_notify_messages();

-- Takes (or renews) the lease on a processor for p_ttl_ms and returns its checkpoint in
-- p_partition: acquired = false while another owner's lease is still running. A version
-- other than the stored one starts the processor again from the beginning (a rebuild).
CREATE OR REPLACE FUNCTION tide_processor_claim(
    p_id text, p_kind text, p_version int, p_owner text, p_ttl_ms int, p_partition text
) RETURNS TABLE (acquired boolean, transaction_id xid8, global_position bigint, rebuilt boolean)
LANGUAGE plpgsql AS $tide_processor_claim$
DECLARE
    v_old_version int;
BEGIN
    PERFORM tide_ensure_partition(p_partition);
    SELECT p.version INTO v_old_version FROM tide_processors p WHERE p.processor_id = p_id;
    INSERT INTO tide_processors AS p (processor_id, kind, version, partition, owner,
                                      lease_until, status)
    VALUES (p_id, p_kind, p_version, p_partition, p_owner,
            now() + make_interval(secs => p_ttl_ms / 1000.0), 'running')
    ON CONFLICT (processor_id) DO UPDATE
        SET owner = excluded.owner, lease_until = excluded.lease_until, kind = excluded.kind,
            version = excluded.version, partition = excluded.partition, status = 'running',
            updated_at = now()
        WHERE p.owner IS NULL OR p.owner = excluded.owner OR p.lease_until < now();
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, NULL::xid8, NULL::bigint, false;
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
               v_old_version IS NOT NULL AND v_old_version <> p_version
          FROM emt_processors e
         WHERE e.processor_id = p_id AND e.partition = p_partition AND e.version = p_version;
END;
$tide_processor_claim$;

-- Moves a processor's checkpoint from (p_from_xid, p_from_pos) to (p_to_xid, p_to_pos),
-- inside the batch's transaction, and renews the lease. Raises when this owner lost the
-- lease or the checkpoint moved meanwhile, so the whole batch rolls back.
CREATE OR REPLACE FUNCTION tide_processor_commit(
    p_id text, p_version int, p_owner text, p_ttl_ms int,
    p_from_xid xid8, p_from_pos bigint, p_to_xid xid8, p_to_pos bigint, p_partition text
) RETURNS void
LANGUAGE plpgsql AS $tide_processor_commit$
BEGIN
    UPDATE tide_processors
       SET lease_until = now() + make_interval(secs => p_ttl_ms / 1000.0), updated_at = now()
     WHERE processor_id = p_id AND owner = p_owner;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'processor % is no longer leased to %', p_id, p_owner
            USING ERRCODE = '55006';
    END IF;
    UPDATE emt_processors
       SET last_processed_transaction_id = p_to_xid,
           last_processed_checkpoint = lpad(p_to_pos::text, 19, '0'),
           last_updated = now()
     WHERE processor_id = p_id AND partition = p_partition AND version = p_version
       AND last_processed_transaction_id = p_from_xid
       AND last_processed_checkpoint = lpad(p_from_pos::text, 19, '0');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'checkpoint of processor % moved under it', p_id USING ERRCODE = '40001';
    END IF;
END;
$tide_processor_commit$;

-- Gives a processor up (clean shutdown), so another daemon may take it at once.
CREATE OR REPLACE FUNCTION tide_processor_release(p_id text, p_owner text) RETURNS void
LANGUAGE sql AS $tide_processor_release$
    UPDATE tide_processors SET owner = NULL, lease_until = NULL, status = 'stopped',
                               updated_at = now()
     WHERE processor_id = p_id AND owner = p_owner;
    UPDATE emt_processors SET status = 'stopped', processor_instance_id = 'emt:unknown',
                              last_updated = now()
     WHERE processor_id = p_id AND processor_instance_id = p_owner;
$tide_processor_release$;
