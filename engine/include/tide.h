/* tide.h — the public C API of libtide: an event store on PostgreSQL (in Emmett's
 * table layout) driven asynchronously from a libuv loop.
 *
 * Threading: every function must be called on the thread that runs the loop given to
 * tide_store_open(). Callbacks fire from that loop, never from inside the call that
 * queued them.
 *
 * Errors: functions return 0 or a negative TIDE_E* code. The message for a failed
 * request arrives with its callback; tide_store_error() holds the last connection-level
 * message. Messages never contain the password of the connection URL. */
#ifndef TIDE_H
#define TIDE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define TIDE_MUST_CHECK __attribute__((warn_unused_result))
#else
#define TIDE_MUST_CHECK
#endif

enum {
	TIDE_OK = 0,
	TIDE_EINVAL = -1,    /* bad argument or input; nothing was written */
	TIDE_ECONFLICT = -2, /* expected version violated (or append_if's query); nothing written */
	TIDE_ECONN = -3,     /* cannot reach the database, or the connection was lost */
	TIDE_EDB = -4,       /* the database refused the request */
	TIDE_ENOMEM = -5,
	TIDE_ECLOSED = -6, /* the store was closed before the request completed */
	/* The connection was lost after an append was sent: it may or may not have been
	 * committed. Read the stream to find out before trying again. */
	TIDE_EUNKNOWN = -7,
	/* A script failed: an inline projection while appending (its error, or its CPU or
	 * memory limit; nothing was written), or a script that does not load. */
	TIDE_ESCRIPT = -8,
	/* The stream was archived (tide_store_archive) and not begun again: a read of it says
	 * so instead of returning no events; archiving it again is refused with it. */
	TIDE_EARCHIVED = -9,
};

/* What tide accepts, checked once on the way in (tide_store_append(), whoever calls it:
 * the CLI, the Lua module, a C host), so that every later path (jsonb, the CLI's output,
 * a script's VM, a document projection) can carry whatever was accepted.
 * Names are stream ids, event types and partitions: 1 to the limit bytes of valid UTF-8
 * without NUL bytes. A stream id is part of the primary-key index, which holds at most
 * ~2.7 kB per entry. The partition limit comes from PostgreSQL's 63-byte identifiers:
 * Emmett names a partition's tables emt_messages_<partition>_archived. An event's data
 * and metadata are each one JSON object: strict JSON that jsonb reads, strings valid
 * UTF-8 without \u0000 or unpaired surrogates, numbers that a double holds (no 1e400),
 * nested at most TIDE_MAX_JSON_DEPTH deep (LuaJIT's decoder and encoder stop there). */
#define TIDE_MAX_NAME_BYTES      1024
#define TIDE_MAX_PARTITION_BYTES 41
#define TIDE_MAX_EVENT_BYTES     (16u << 20) /* data + metadata as JSON text */
#define TIDE_MAX_JSON_DEPTH      128         /* nested objects and arrays */

/* A readable name for a TIDE_E* code ("conflict", "connection", ...). */
const char *tide_strerror(int code);

/* Expected versions for tide_store_append(); any value >= 0 is an exact version
 * (0 matches a stream that does not exist yet). */
#define TIDE_EXPECT_ANY           (-1)
#define TIDE_EXPECT_NO_STREAM     (-2)
#define TIDE_EXPECT_STREAM_EXISTS (-3)

struct tide_store;

/* One event to append. type is a name (see the limits above); data and metadata are JSON
 * texts and must be objects, together at most TIDE_MAX_EVENT_BYTES; metadata and
 * message_id may be NULL (message_id is then a generated UUID; when given, a UUID).
 * schema_version is the shape its data has (message_schema_version: a whole number >= 1 as
 * text, at most 9 digits); NULL writes "1". The strings are copied before
 * tide_store_append() returns. */
struct tide_event {
	const char *type;
	const char *data;
	const char *metadata;
	const char *message_id;
	const char *schema_version;
};

/* One stored message. All strings are owned by the store and valid only during the
 * callback that delivers them. data and metadata are JSON texts; created is ISO 8601 UTC. */
struct tide_message {
	const char *stream_id;
	int64_t stream_position;
	int64_t global_position;
	uint64_t transaction_id; /* global reads only (the cursor's half); 0 from stream reads */
	const char *type;
	const char *data;
	const char *metadata;
	const char *message_id;
	const char *created;
	const char *partition;      /* the partition (tenant) it was appended in */
	const char *schema_version; /* message_schema_version as written, e.g. "1" */
};

/* A position in the global log: the pair (transaction id, global position).
 * {0, 0} is the start of the log. */
struct tide_cursor {
	uint64_t transaction_id;
	int64_t global_position;
};

struct tide_append_result {
	int64_t next_expected_version;   /* the stream's version after the append */
	const int64_t *global_positions; /* one per appended event, in order */
	size_t count;
	/* On TIDE_ECONFLICT: what was expected and the version found (-1: no stream). */
	int64_t expected;
	int64_t actual;
	/* On TIDE_ECONFLICT with actual -1: the stream is archived (not begun again). */
	bool archived;
	/* When an inline projection failed (TIDE_ESCRIPT, or TIDE_EDB when its SQL did): its
	 * processor id (APP/NAME) and its script's stack ("" when there is none); else NULL. */
	const char *processor;
	const char *traceback;
	/* On TIDE_ECONFLICT from tide_store_append_if because an event matched its query: the
	 * global position of the first such event after after_position (0 for a version
	 * conflict, which has expected and actual as above). */
	int64_t found_position;
};

struct tide_read_result {
	const struct tide_message *messages;
	size_t count;
	/* read_all only: the cursor to pass next time (unchanged when nothing was read). */
	struct tide_cursor next;
};

struct tide_read_opts {
	int64_t from; /* lowest stream position, inclusive; 0 or 1: the first */
	int64_t to;   /* highest stream position, inclusive; 0: no limit */
	int64_t max;  /* at most this many messages; 0: no limit */
	int backward; /* non-zero: newest first (max then keeps the newest) */
};

/* status is 0 or a TIDE_E* code; err is a message when status != 0 (else NULL).
 * result is NULL when status is an error other than TIDE_ECONFLICT or an inline
 * projection's failure (result->processor). */
typedef void (*tide_open_cb)(struct tide_store *store, int status, const char *err, void *arg);
typedef void (*tide_append_cb)(int status, const char *err, const struct tide_append_result *result,
                               void *arg);
typedef void (*tide_read_cb)(int status, const char *err, const struct tide_read_result *result,
                             void *arg);
/* applied: how many migrations this call applied (0 when the schema was current). */
typedef void (*tide_migrate_cb)(int status, const char *err, size_t applied, void *arg);

/* Connects to url (a libpq URL or key=value string) without blocking the loop.
 * *out is set at once and belongs to the caller, who releases it with tide_store_close()
 * — also when cb reports a failure. cb fires once. */
TIDE_MUST_CHECK int tide_store_open(uv_loop_t *loop, const char *url, tide_open_cb cb, void *arg,
                                    struct tide_store **out);

/* The name later connections show in pg_stat_activity unless their URL names one
 * (application_name); default "tide". Copied; at most 63 bytes are kept. */
void tide_set_application_name(const char *name);

/* Fails every pending request with TIDE_ECLOSED, closes the connection and frees the
 * store once its libuv handles are closed (the loop must run for that). */
void tide_store_close(struct tide_store *store);

/* The partition (Emmett's `partition` column: a tenant, say) that every later append and
 * read of this store works in; the default is TIDE_DEFAULT_PARTITION. Appending to a new
 * partition creates its tables. The name is copied; TIDE_EINVAL (message in
 * tide_store_error()) unless it is 1..TIDE_MAX_PARTITION_BYTES bytes of valid UTF-8. */
#define TIDE_DEFAULT_PARTITION "emt:default"
TIDE_MUST_CHECK int tide_store_set_partition(struct tide_store *store, const char *partition);
const char *tide_store_partition(const struct tide_store *store);

/* The inline projections every later append of this store runs inside its transaction
 * (README "Inline projections"): the *.lua files of dir but specs, loaded in the sandbox as
 * `tide run` loads scripts, now, on the calling thread (it reads files: call it while setting
 * the store up, not on a busy loop). Files returning a projection with inline = true are
 * kept, the others ignored; their processor ids are APP/NAME, APP the directory's name. An
 * append then sends BEGIN, the append, the projections' bookkeeping and their SQL, and COMMIT
 * (always on the store's connection: no COPY), and fails with the error of a projection that
 * fails, writing nothing. While it is in flight, further appends wait for it, and other
 * requests sent on the store run inside its transaction. dir NULL: none. Returns TIDE_EINVAL
 * when dir cannot be read or an append is in flight, TIDE_ESCRIPT when a file does not load,
 * TIDE_ENOMEM; the message in tide_store_error() names the file; the store then keeps the
 * projections it had. */
TIDE_MUST_CHECK int tide_store_set_projections(struct tide_store *store, const char *dir);

/* True while the store's connection is up. After a lost connection (TIDE_ECONN or
 * TIDE_EUNKNOWN) requests fail with TIDE_ECONN until tide_store_reconnect succeeds. */
bool tide_store_connected(const struct tide_store *store);

/* Connects again after the connection was lost, keeping the partition; cb fires once, on a
 * later loop turn (status 0: connected). Returns TIDE_EINVAL while requests of the old
 * connection are still being failed, or while already connecting. */
TIDE_MUST_CHECK int tide_store_reconnect(struct tide_store *store, tide_open_cb cb, void *arg);

/* The last connection-level error message, or "" (owned by the store). */
const char *tide_store_error(const struct tide_store *store);

/* Appends n >= 1 events to one stream in one transaction and one round trip. From 2,000
 * events on (outside a transaction of tide_store_begin) the events go by COPY on a second
 * connection the store opens on first use: same outcome, but its callback may then come
 * before those of requests sent ahead of it.
 * Returns TIDE_EINVAL when the input is bad — the stream name or a type is empty, longer
 * than TIDE_MAX_NAME_BYTES or not valid UTF-8; data or metadata fails the JSON rules
 * above; an event is larger than TIDE_MAX_EVENT_BYTES; a message id is not a UUID —
 * with the message in tide_store_error(); then nothing is sent and cb is not called. */
TIDE_MUST_CHECK int tide_store_append(struct tide_store *store, const char *stream,
                                      const struct tide_event *events, size_t n, int64_t expected,
                                      tide_append_cb cb, void *arg);

/* A query over the events of the store's partition, for conditional appends (a dynamic
 * consistency boundary): an event matches when its type is one of types (any type when
 * ntypes is 0) and its data contains every field of data with an equal value (no condition
 * when data is NULL). data is the JSON text of an object of top-level fields whose values are
 * strings, numbers or booleans ({"seat":"12A"}; 1 and 1.0 are equal). At least one of the two;
 * at most TIDE_MAX_QUERY_TYPES types and TIDE_MAX_QUERY_FIELDS fields; types are names (the
 * rules of tide_store_append). Copied before the call returns. Name types when you can: a
 * query with types reads an index from the position on, one of data fields alone reads every
 * event after it. */
struct tide_query {
	const char *const *types;
	size_t ntypes;
	const char *data;
};
#define TIDE_MAX_QUERY_TYPES  64
#define TIDE_MAX_QUERY_FIELDS 16

/* tide_store_append, on condition that no event matching query was appended to the store's
 * partition after global position after_position (>= 0; typically the position of the last
 * matching event the caller read, or 0): otherwise nothing is written and cb gets
 * TIDE_ECONFLICT with result->found_position. expected still applies (a version conflict has
 * found_position 0). One statement, one round trip: it takes a transaction-level advisory
 * lock on each key of the query (see sql/0014), checks, and appends. Safe between append_if
 * writers whose queries share a key (a data field = value of the query, or a type when it has
 * no data): they run one after the other and each sees what the one before it committed, so
 * of writers racing on one boundary exactly one succeeds, without SERIALIZABLE. A plain
 * tide_store_append takes no lock: an event it commits while the check runs is not seen.
 * Never by COPY, whatever n is. Returns TIDE_EINVAL (cb not called, message in
 * tide_store_error()) for what tide_store_append refuses, a bad query or after_position, events
 * that an inline projection of the store takes (it does not run them), or while an append with
 * inline projections is in flight. */
TIDE_MUST_CHECK int tide_store_append_if(struct tide_store *store, const struct tide_query *query,
                                         int64_t after_position, const char *stream,
                                         const struct tide_event *events, size_t n,
                                         int64_t expected, tide_append_cb cb, void *arg);

/* The events of the store's partition that match query (see tide_query), after global
 * position `after` (0: from the start), in global order, at most max (0: no limit): what a
 * decider of a consistency boundary folds. result->next.global_position is the position to
 * give tide_store_append_if for a decision on them: the head of the log once they were read
 * (the read first waits for the append_if writers in flight whose queries share a key with
 * this one, so none of theirs is left below it unseen). When max cut the read short, read on
 * after its last message; the last read's position is the one. result->next.transaction_id
 * is 0. TIDE_EINVAL (cb not called) for a bad query or a negative after or max. */
TIDE_MUST_CHECK int tide_store_read_query(struct tide_store *store, const struct tide_query *query,
                                          int64_t after, int64_t max, tide_read_cb cb, void *arg);

/* Reads one stream. opts may be NULL (everything, oldest first). TIDE_EINVAL (cb not
 * called) when the stream name breaks the rules of tide_store_append(). A read that finds
 * no events of a stream that is archived (and not begun again) ends with TIDE_EARCHIVED
 * (result NULL) instead: that takes a second statement, only when a read finds nothing. */
TIDE_MUST_CHECK int tide_store_read_stream(struct tide_store *store, const char *stream,
                                           const struct tide_read_opts *opts, tide_read_cb cb,
                                           void *arg);

/* One message of a read as it arrives; valid during the call only. */
typedef void (*tide_read_each_cb)(const struct tide_message *message, void *arg);

/* Reads one stream as tide_store_read_stream does, but hands each message to each() as
 * soon as it arrives, in order, while the server still sends the rest (a consumer that
 * turns them into something of its own works alongside the server instead of after it).
 * cb then ends the read: status 0 with a result of count 0 (the messages all went to
 * each), or an error — after which the messages already handed on are not the whole read
 * and are to be dropped. */
TIDE_MUST_CHECK int tide_store_read_stream_each(struct tide_store *store, const char *stream,
                                                const struct tide_read_opts *opts,
                                                tide_read_each_cb each, tide_read_cb cb, void *arg);

/* Reads the global log after `after` (NULL: from the start), at most max messages
 * (0: 1000), in (transaction_id, global_position) order. Only messages of transactions
 * older than every transaction still running are returned, so a reader that follows the
 * cursor sees every message exactly once even when appends commit out of order. */
TIDE_MUST_CHECK int tide_store_read_all(struct tide_store *store, const struct tide_cursor *after,
                                        int64_t max, tide_read_cb cb, void *arg);

/* Like tide_store_read_all, but only messages of the given types (n >= 1 non-empty
 * names; n == 0: all). The filter runs on the server: other messages never leave it. It
 * walks at most max messages of the log per call, so a call may return fewer than max
 * (even none) while more follow; result->next then still moves past the walked ones. */
TIDE_MUST_CHECK int tide_store_read_all_types(struct tide_store *store,
                                              const struct tide_cursor *after, int64_t max,
                                              const char *const *types, size_t n, tide_read_cb cb,
                                              void *arg);

/* What a read of the global log keeps (tide_store_read_log); zeroed: everything of the
 * store's partition. Every filter runs on the server: what it leaves out never leaves it. */
struct tide_log_filter {
	const char *const *types; /* only messages of these types (ntypes >= 1 non-empty names) */
	size_t ntypes;
	/* only streams whose id hashes to shard (0..shards-1); shards <= 1: all */
	int shard, shards;
	bool all_partitions; /* every partition's messages, in one order, not only the store's */
};

/* The general form of tide_store_read_all_types: filter may be NULL. */
TIDE_MUST_CHECK int tide_store_read_log(struct tide_store *store, const struct tide_cursor *after,
                                        int64_t max, const struct tide_log_filter *filter,
                                        tide_read_cb cb, void *arg);

/* What tide_store_archive moved: the stream's version and how many events went with it. */
struct tide_archive_result {
	int64_t version;
	int64_t events;
};
typedef void (*tide_archive_cb)(int status, const char *err,
                                const struct tide_archive_result *result, void *arg);

/* Archives one stream of the store's partition the way Emmett's layout keeps archived
 * streams: in one transaction its emt_streams row and all its emt_messages rows move to the
 * is_archived = true partitions (positions, global positions and ids kept). Reads of the
 * stream then end with TIDE_EARCHIVED, the global log (tide_store_read_all) no longer has
 * its events, and an append expecting the stream (TIDE_EXPECT_STREAM_EXISTS or a version)
 * is a TIDE_ECONFLICT with result->archived set; an append expecting any or no stream
 * begins the stream again at position 1, as Emmett's does. Appends to the stream sent
 * meanwhile wait for the archive's transaction.
 * cb fires once: 0 with result; TIDE_EINVAL when there is no such stream; TIDE_EARCHIVED
 * when it is archived already, or when it was archived once and begun again (Emmett's
 * primary keys keep one archived stream per stream id and partition); nothing changed then
 * and result is NULL; TIDE_EUNKNOWN when the connection was lost after it was sent (read
 * the stream to find out). Returns TIDE_EINVAL (cb not called, message in tide_store_error())
 * when the stream name breaks the rules of tide_store_append(), TIDE_ECONN when the store
 * is not connected. Inside a transaction of tide_store_begin it is part of that
 * transaction. */
TIDE_MUST_CHECK int tide_store_archive(struct tide_store *store, const char *stream,
                                       tide_archive_cb cb, void *arg);

/* A transaction of the caller's on the store's connection. Every request sent on the store
 * while it is open (appends, reads) runs inside it, in the order sent: a decider reads the
 * stream's tail, decides and appends under the stream's lock, and its append cannot
 * conflict. One transaction at a time per store, at READ COMMITTED. A lost connection ends
 * the transaction uncommitted: an append inside that reports TIDE_EUNKNOWN was not
 * committed (only COMMIT's outcome can be unknown).
 *
 * version: the locked stream's version, or -1 when the stream does not exist (no row to
 * lock: an append expecting TIDE_EXPECT_NO_STREAM may still conflict with a writer that
 * creates it meanwhile) or when no stream was named. status as for the other callbacks. */
typedef void (*tide_begin_cb)(int status, const char *err, int64_t version, void *arg);
typedef void (*tide_end_cb)(int status, const char *err, void *arg);

/* Sends BEGIN and, when stream is not NULL, locks the stream's row (SELECT ... FOR UPDATE
 * on emt_streams: tide's appends and Emmett's take the same lock, so the stream's version
 * cannot move until the transaction ends); waits for the lock as long as another
 * transaction holds it. cb fires once the lock is held, or with the failure. Requests may
 * be sent right after this call; they run inside the transaction. On failure (cb's status
 * != 0) no transaction is open any more when cb fires; requests sent meanwhile failed.
 * Returns TIDE_EINVAL (cb not called, message in tide_store_error()) when a transaction is
 * already open on the store or the stream name breaks the rules of tide_store_append(),
 * TIDE_ECONN when the store is not connected. */
TIDE_MUST_CHECK int tide_store_begin(struct tide_store *store, const char *stream, tide_begin_cb cb,
                                     void *arg);

/* Commits the open transaction (begin's callback reported success). cb fires once it has
 * ended: 0 when committed; TIDE_EDB when the server refused or a statement in it had failed
 * (then nothing in it was committed); TIDE_EUNKNOWN when the connection was lost after
 * COMMIT was sent (read to find out); TIDE_ECONN when it was lost before. Consumers are
 * woken after a commit that appended. Returns TIDE_EINVAL (cb not called) when no
 * transaction is open or it is not yet begun or already ending; TIDE_ECONN (cb not called)
 * when the connection was lost since begin: the transaction is gone with it, nothing in it
 * was committed, and the store is free for another (after tide_store_reconnect()). */
TIDE_MUST_CHECK int tide_store_commit(struct tide_store *store, tide_end_cb cb, void *arg);

/* Rolls the open transaction back: nothing sent in it is kept, the lock is released.
 * cb fires with 0, or TIDE_ECONN when the connection was lost (the transaction ended with
 * it, nothing committed). Returns as tide_store_commit(). After a lost connection,
 * call this (it returns TIDE_ECONN at once) to forget the transaction before
 * tide_store_reconnect(): requests on the new connection would run outside it. */
TIDE_MUST_CHECK int tide_store_rollback(struct tide_store *store, tide_end_cb cb, void *arg);

/* True from tide_store_begin() until its transaction has ended (a failed begin's callback,
 * or commit's or rollback's callback, or their synchronous TIDE_ECONN). */
bool tide_store_in_transaction(const struct tide_store *store);

/* Documents: what document projections keep in tide_documents, one JSON document per id of
 * a collection. A collection is named as the projection names it; readers see the generation
 * of it that is live (sql/0007's tide_collection(): after a blue-green rebuild, the new one).
 * Strings are owned by the store and valid only during the callback that delivers them. */
struct tide_document {
	const char *id;
	const char *doc; /* JSON text, as PostgreSQL prints jsonb */
	/* The event it reflects last: its stream, stream position and global position
	 * (NULL and 0 for a document written before tide recorded them). */
	const char *last_stream_id;
	int64_t last_stream_position;
	int64_t last_global_position;
	const char *updated_at; /* ISO 8601 UTC */
};

struct tide_docs_result {
	const struct tide_document *documents; /* in id order */
	size_t count;
};

#define TIDE_DOCS_DEFAULT_LIMIT 100
#define TIDE_DOCS_MAX_LIMIT     1000

struct tide_docs_opts {
	/* A JSON object: only documents that contain it (jsonb's @>: {"status":"open"}
	 * matches every document whose status is "open"); NULL: every document. */
	const char *where;
	/* Only documents whose id comes after this one (the last id of the previous page);
	 * NULL: from the first. Ids are in the database's text order (its collation). */
	const char *after;
	int64_t limit; /* at most this many, 1..TIDE_DOCS_MAX_LIMIT; 0: TIDE_DOCS_DEFAULT_LIMIT */
};

/* status as for the other callbacks; result is NULL when status != 0. */
typedef void (*tide_docs_cb)(int status, const char *err, const struct tide_docs_result *result,
                             void *arg);

/* The document id of collection: result->count is 1, or 0 when there is none (not an
 * error). TIDE_EINVAL (cb not called, message in tide_store_error()) when the collection
 * or the id is empty, longer than TIDE_MAX_NAME_BYTES or not valid UTF-8. */
TIDE_MUST_CHECK int tide_store_doc(struct tide_store *store, const char *collection, const char *id,
                                   tide_docs_cb cb, void *arg);

/* A page of collection's documents in id order; opts may be NULL (the first
 * TIDE_DOCS_DEFAULT_LIMIT). A page shorter than the limit is the last. TIDE_EINVAL (cb not
 * called) for a bad collection name or after (as tide_store_doc), a limit out of range, or
 * a where that is not a JSON object. */
TIDE_MUST_CHECK int tide_store_docs(struct tide_store *store, const char *collection,
                                    const struct tide_docs_opts *opts, tide_docs_cb cb, void *arg);

/* Applies pending schema migrations in one transaction on a connection of its own:
 * idempotent, serialized between processes by an advisory lock, and safe on a database
 * whose Emmett tables already exist. The store need not be connected yet. */
TIDE_MUST_CHECK int tide_store_migrate(struct tide_store *store, tide_migrate_cb cb, void *arg);

/* The SQL of every migration, in order (static, not owned by the caller). */
size_t tide_migration_count(void);
const char *tide_migration_name(size_t i);
const char *tide_migration_sql(size_t i);

/* Formats / parses a cursor as "XID:POS". Parse returns 0 or TIDE_EINVAL. */
void tide_cursor_format(const struct tide_cursor *c, char buf[48]);
TIDE_MUST_CHECK int tide_cursor_parse(const char *text, struct tide_cursor *out);

#ifdef __cplusplus
}
#endif
#endif
