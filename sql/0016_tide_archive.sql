-- Archiving a stream (README "Archiving a stream"; engine/archive.c sends it): its
-- emt_streams row and its emt_messages rows move from the is_archived = false partitions to
-- the is_archived = true ones, in one transaction. Emmett has no archive operation of its
-- own; every read it makes (readStream, streamExists, readMessagesBatch, its append's
-- version lookup) asks for NOT is_archived, so to Emmett an archived stream is one that
-- does not exist, and appending to it with no expectation (or expecting no stream) begins
-- it again at position 1. tide does the same.
--
-- The rows are deleted and inserted again, not updated: an UPDATE of is_archived would move
-- them between partitions too, but then an append waiting for the stream's row would fail
-- with "tuple to be locked was already moved to another partition" (40001). Waiting for a
-- deleted row instead, an `any` append begins the stream again and an append expecting the
-- stream finds none. Positions, ids, transaction ids and time stamps are kept.
--
-- Emmett's primary keys hold one archived stream per (stream_id, partition): a stream begun
-- again after archiving cannot be archived a second time (its positions would collide with
-- the archived ones), and is refused with 'archived_before'.
--
-- Outcome: 'archived' (version: the stream's, moved: its messages), 'missing' (no such
-- stream), 'already_archived' (only an archived stream of that id), 'archived_before'.
CREATE OR REPLACE FUNCTION tide_archive_stream(p_stream_id text, p_partition text)
RETURNS TABLE (outcome text, version bigint, moved bigint)
LANGUAGE plpgsql AS $tide_archive_stream$
DECLARE
    v_version bigint;
    v_moved   bigint;
    v_before  boolean;
BEGIN
    -- Locked: appends to the stream wait for this transaction to end.
    SELECT s.stream_position INTO v_version FROM emt_streams s
     WHERE s.stream_id = p_stream_id AND s.partition = p_partition AND NOT s.is_archived
       FOR UPDATE;
    SELECT EXISTS (SELECT 1 FROM emt_streams s
                    WHERE s.stream_id = p_stream_id AND s.partition = p_partition
                      AND s.is_archived) INTO v_before;
    IF v_version IS NULL THEN
        RETURN QUERY SELECT CASE WHEN v_before THEN 'already_archived' ELSE 'missing' END,
                            NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    IF v_before THEN
        RETURN QUERY SELECT 'archived_before', v_version, NULL::bigint;
        RETURN;
    END IF;

    WITH gone AS (
        DELETE FROM emt_streams s
         WHERE s.stream_id = p_stream_id AND s.partition = p_partition AND NOT s.is_archived
        RETURNING s.stream_id, s.stream_position, s.partition, s.stream_type, s.stream_metadata
    )
    INSERT INTO emt_streams (stream_id, stream_position, partition, stream_type,
                             stream_metadata, is_archived)
    SELECT g.stream_id, g.stream_position, g.partition, g.stream_type, g.stream_metadata, true
      FROM gone g;

    WITH gone AS (
        DELETE FROM emt_messages m
         WHERE m.stream_id = p_stream_id AND m.partition = p_partition AND NOT m.is_archived
        RETURNING m.stream_position, m.global_position, m.transaction_id, m.created,
                  m.message_kind, m.stream_id, m.partition, m.message_schema_version,
                  m.message_id, m.message_type, m.message_data, m.message_metadata
    )
    INSERT INTO emt_messages (stream_position, global_position, transaction_id, created,
                              is_archived, message_kind, stream_id, partition,
                              message_schema_version, message_id, message_type, message_data,
                              message_metadata)
    SELECT g.stream_position, g.global_position, g.transaction_id, g.created, true,
           g.message_kind, g.stream_id, g.partition, g.message_schema_version, g.message_id,
           g.message_type, g.message_data, g.message_metadata
      FROM gone g;
    GET DIAGNOSTICS v_moved = ROW_COUNT;

    RETURN QUERY SELECT 'archived', v_version, v_moved;
END;
$tide_archive_stream$;
