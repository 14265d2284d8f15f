"""The lexical (BM25) side of the index on a PostgreSQL server, for libraries that outgrow one machine.

The embedded BM25 index (`cove.lexical`) is a copy every Cove process holds in RAM: at a million
chunks that is ~17 GB per process and a four-minute rebuild after every change. With
`lexical.postgres_url` set, the chunks' terms live in PostgreSQL instead, beside the Chroma server:
a Cove process keeps nothing of them in memory, and a change is written once, by the writer.

What is stored, per collection:
- each chunk: its id, document, term count, a number (`num`) and a `tsvector` of Cove's own tokens
  (the same normalising, stop words and stemmer as the embedded index, `cove.lexical.tokenize`, put in
  with the `simple` configuration so PostgreSQL changes nothing);
- each term: its document frequency;
- each term's *postings*, impact-ordered: the chunks holding it, by their BM25 term weight
  (tf / (tf + k1 (1 - b + b len / avgdl)), highest first) in blocks of `BLOCK`. Chunks written since
  the blocks were built sit in unordered *delta* rows (block -1), which every query reads whole; when
  they (and deleted chunks) pass `COMPACT_SHARE` of the library, the blocks are rebuilt in the server.

A query is scored by BM25 exactly, as the embedded index scores (same idf, k1, b), without reading
every chunk that holds a common term: the threshold algorithm (Fagin et al.) reads each query term's
best postings block by block, looks the promising chunks' exact scores up (their `tsvector`), and
stops when no unread chunk can beat the k-th best score. So search fuses as today (`cove.retrieve`):
only the engine under the BM25 ranking moved. The average chunk length in the weights is the one of
the last block build (exact after a rebuild; at most `COMPACT_SHARE` of the library behind).

Consistency follows the store's generation token (`cove.store.ChunkStore.mark_changed`), as the
embedded index does: the table records the generation its rows belong to; a write first marks the
table dirty with a marker unique to the writer, and only the writer's next `mark_changed` stamps
the new generation. A writer that crashed mid-write leaves the marker, which no store generation
ever equals, so the next reader rebuilds the table from the Chroma collection (under an advisory
lock: one instance rebuilds, the others wait and find it done).
"""

from __future__ import annotations

import math
import re
import threading
import uuid
from collections import Counter
from collections.abc import Iterable

from cove.lexical import TOKENIZER_VERSION, LexicalHit, chunk_doc_id, lexical_text, tokenize

K1, B = 1.5, 0.75  # bm25s's defaults (its "lucene" BM25): the embedded index ranks with the same
LAYOUT = 2  # bump when the tables' layout changes: older rows are then rebuilt from the chunk store
BLOCK = 1024  # postings per impact-ordered block: what one step of a query reads of a term
COMPACT_SHARE = 0.1  # rebuild the blocks when this share of the library was written or deleted since
MINOR_TERM = 0.02  # a term that can add less than this share of the most any term can add waits
LOOKUP_LIMIT = 1024  # exact scores are looked up for at most this many chunks (more: only ties or gone ones)
WRITE_BATCH = 2_000
MAX_POSITIONS = 16383  # PostgreSQL keeps a term's positions up to here (and 256 of them: tf is capped there)
_LOCK_KEY = 0x636F7665  # "cove": the advisory lock a rebuild holds
_ROUNDING = 1 + 1e-6  # weights are stored as float4: bounds allow for their rounding

# The tables are named for their layout (`cove_bm25_*`): an older Cove's `cove_lexical_*` tables
# are never altered or read, so instances of both versions can run side by side during an upgrade.
SCHEMA = """
CREATE TABLE IF NOT EXISTS cove_bm25_chunks (
    collection text NOT NULL, id text NOT NULL, doc_id text NOT NULL, length integer NOT NULL,
    terms tsvector NOT NULL, num bigint GENERATED ALWAYS AS IDENTITY, PRIMARY KEY (collection, id));
CREATE UNIQUE INDEX IF NOT EXISTS cove_bm25_num ON cove_bm25_chunks (num);
CREATE INDEX IF NOT EXISTS cove_bm25_doc ON cove_bm25_chunks (collection, doc_id);
CREATE TABLE IF NOT EXISTS cove_bm25_df (
    collection text NOT NULL, term text NOT NULL, df integer NOT NULL, PRIMARY KEY (collection, term));
CREATE TABLE IF NOT EXISTS cove_bm25_postings (
    collection text NOT NULL, term text NOT NULL, block integer NOT NULL, postings bytea NOT NULL);
ALTER TABLE cove_bm25_postings ALTER COLUMN postings SET STORAGE EXTERNAL;  -- read as is, never decompressed
CREATE INDEX IF NOT EXISTS cove_bm25_postings_term ON cove_bm25_postings (collection, term, block);
CREATE TABLE IF NOT EXISTS cove_bm25_meta (
    collection text PRIMARY KEY, generation text NOT NULL, tokenizer integer NOT NULL, layout integer NOT NULL,
    chunks bigint NOT NULL DEFAULT 0, length bigint NOT NULL DEFAULT 0,
    avgdl double precision NOT NULL DEFAULT 1, blocked bigint NOT NULL DEFAULT 0,
    changed bigint NOT NULL DEFAULT 0, first_num bigint NOT NULL DEFAULT 0, last_num bigint NOT NULL DEFAULT 0);
"""
_SCHEMA_READY = "SELECT to_regclass('cove_bm25_meta') IS NOT NULL"  # created last
TABLES = ("cove_bm25_chunks", "cove_bm25_df", "cove_bm25_postings", "cove_bm25_meta")

# A chunk's BM25 weight for a term, from the term's positions in the chunk's tsvector (`t`) and the
# chunk's length (`c`): the one formula the blocks, the delta rows and the exact scores share.
_TF = "array_length(t.positions, 1)::float8"
_WEIGHT = f"({_TF} / ({_TF} + {K1} * (1 - {B} + {B} * c.length / %(avgdl)s)))"

# A posting, packed: the chunk's number (int8) and its weight for the term (float4), big-endian, so a
# block arrives as one bytes object that numpy reads without converting a value (`POSTING`).
_PACKED = "int8send(num) || float4send(weight)"
POSTING = [("num", ">i8"), ("weight", ">f4")]

# Every chunk's postings, highest weight first, cut into blocks.
_BLOCKS = f"""
INSERT INTO cove_bm25_postings (collection, term, block, postings)
SELECT %(collection)s, term, (rank - 1) / {BLOCK}, string_agg({_PACKED}, ''::bytea ORDER BY rank)
FROM (SELECT term, num, weight, row_number() OVER (PARTITION BY term ORDER BY weight DESC, num) AS rank
      FROM (SELECT t.lexeme AS term, c.num, {_WEIGHT}::real AS weight
            FROM cove_bm25_chunks c CROSS JOIN LATERAL unnest(c.terms) t
            WHERE c.collection = %(collection)s) AS weighted) AS ranked
GROUP BY term, (rank - 1) / {BLOCK}
"""

# Delta rows: a document's chunks just written, one row per term, read whole by every query.
_DELTA = f"""
INSERT INTO cove_bm25_postings (collection, term, block, postings)
SELECT %(collection)s, term, -1, string_agg({_PACKED}, ''::bytea)
FROM (SELECT t.lexeme AS term, c.num, {_WEIGHT}::real AS weight
      FROM cove_bm25_chunks c CROSS JOIN LATERAL unnest(c.terms) t
      WHERE c.collection = %(collection)s AND c.doc_id = %(doc_id)s) AS weighted
GROUP BY term
"""

# Exact BM25 scores of some chunks (`{source}` names them): each chunk's tsvector cut down to the
# query's terms in the server's C code (setweight marks them, ts_filter keeps them), then summed.
_SCORES = f"""
SELECT c.num, c.id, sum(q.idf * {_WEIGHT}) AS score
FROM {{source}} c
CROSS JOIN LATERAL unnest(ts_filter(setweight(c.terms, 'A', %(terms)s::text[]), '{{{{a}}}}')) t
JOIN unnest(%(terms)s::text[], %(idf)s::float8[]) AS q(term, idf) ON q.term = t.lexeme
GROUP BY c.num, c.id
"""
_BY_NUM = "(SELECT * FROM cove_bm25_chunks WHERE collection = %(collection)s AND num = ANY(%(nums)s))"
_BY_DOC = "(SELECT * FROM cove_bm25_chunks WHERE collection = %(collection)s AND doc_id = ANY(%(docs)s))"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server of `lexical.postgres_url` cannot be reached."""


def chunk_terms(texts: list[str]) -> list[list[str]]:
    """Cove's BM25 tokens of each text (see `cove.lexical.tokenize`)."""
    return [list(tokens) for tokens in tokenize(texts, as_strings=True)] if texts else []


def _lexeme(term: str) -> str:
    """A token as a quoted tsvector lexeme: nothing in a document's text can become an operator."""
    return "'" + term.replace("\\", "\\\\").replace("'", "''") + "'"


def _clean(term: str) -> str:
    return re.sub(r"[^\w]", "_", term)


class PostgresLexicalIndex:
    """BM25 over one collection's chunks, in PostgreSQL (same `search` as `cove.lexical.LexicalIndex`)."""

    def __init__(self, url: str, collection: str, timeout_s: float = 10.0) -> None:
        self.url = url
        self.collection = collection
        self.timeout_s = timeout_s
        self._dirty = f"dirty:{uuid.uuid4().hex}"  # this writer's marker while its write is under way
        self._local = threading.local()
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cur:
            # Creating the tables locks them: only when they are missing, one instance at a time.
            cur.execute(_SCHEMA_READY)
            if not cur.fetchone()[0]:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY + 1,))
                cur.execute(_SCHEMA_READY)  # another instance may have created them while we waited
                if not cur.fetchone()[0]:
                    cur.execute(SCHEMA)

    # --- connection -------------------------------------------------------------------------------
    def _connection(self):
        import psycopg

        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.timeout_s)))
            except psycopg.OperationalError as err:
                raise PostgresUnavailable(
                    f"the PostgreSQL server for the lexical index is not reachable ({_redacted(str(err), self.url)}); "
                    "start it (scripts/postgres.sh start) or fix lexical.postgres_url"
                ) from err
            self._local.conn = conn
        return conn

    def _cursor(self):
        return self._connection().cursor()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # --- state ------------------------------------------------------------------------------------
    @property
    def generation(self) -> str | None:
        """The store generation the rows belong to (None: never built, built by another tokenizer or
        layout, or dirty)."""
        with self._cursor() as cur:
            cur.execute(
                "SELECT generation, tokenizer, layout FROM cove_bm25_meta WHERE collection = %s", (self.collection,)
            )
            row = cur.fetchone()
        if row is None or (row[1], row[2]) != (TOKENIZER_VERSION, LAYOUT) or row[0].startswith("dirty:"):
            return None
        return row[0]

    def __len__(self) -> int:
        with self._cursor() as cur:
            cur.execute("SELECT chunks FROM cove_bm25_meta WHERE collection = %s", (self.collection,))
            row = cur.fetchone()
        return int(row[0]) if row else 0

    # --- writing (the writer holds the home's writer lock) ----------------------------------------
    def _mark_dirty(self, cur) -> None:
        cur.execute(
            "INSERT INTO cove_bm25_meta (collection, generation, tokenizer, layout) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (collection) DO UPDATE SET generation = EXCLUDED.generation",
            (self.collection, self._dirty, TOKENIZER_VERSION, LAYOUT),
        )

    def advance(self, previous: str, token: str) -> None:
        """The store moved from generation `previous` to `token` (`ChunkStore.mark_changed`): the
        rows belong to `token` too if they belonged to `previous`, or if this writer wrote them."""
        with self._cursor() as cur:
            cur.execute(
                "UPDATE cove_bm25_meta SET generation = %s WHERE collection = %s AND generation IN (%s, %s)",
                (token, self.collection, previous, self._dirty),
            )

    def replace_document(self, doc_id: str, ids: list[str], texts: list[str], metadatas: list[dict]) -> None:
        """The document's chunks (their `lexical_text`), replacing what it had."""
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cur:
            self._mark_dirty(cur)
            self._delete(cur, doc_id)
            terms = chunk_terms([lexical_text(t, m) for t, m in zip(texts, metadatas, strict=True)])
            self._insert(cur, [(i, doc_id, t) for i, t in zip(ids, terms, strict=True)])
            if not self._compact_if_due(cur):  # a block build takes the new chunks in: no delta rows then
                cur.execute(_DELTA, {"collection": self.collection, "doc_id": doc_id, "avgdl": self._avgdl(cur)})

    def delete_document(self, doc_id: str) -> None:
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cur:
            self._mark_dirty(cur)
            self._delete(cur, doc_id)
            self._compact_if_due(cur)

    def reset(self) -> None:
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cur:
            self._mark_dirty(cur)
            self._clear(cur)

    def drop_collections(self, names: list[str]) -> None:
        """Forget other index identities' rows (their Chroma collections were just dropped)."""
        if not names:
            return
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cur:
            for table in TABLES:
                cur.execute(f"DELETE FROM {table} WHERE collection = ANY(%s)", (names,))  # table: a constant

    def _clear(self, cur) -> None:
        for table in TABLES[:-1]:
            cur.execute(f"DELETE FROM {table} WHERE collection = %s", (self.collection,))  # table: a constant
        cur.execute(
            "UPDATE cove_bm25_meta SET chunks = 0, length = 0, avgdl = 1, blocked = 0, changed = 0 "
            "WHERE collection = %s",
            (self.collection,),
        )

    def _delete(self, cur, doc_id: str) -> None:
        """A document's chunks out (their postings stay until the next block build: a posting of a
        chunk that is gone is skipped when its score is looked up)."""
        cur.execute(
            "SELECT count(*), coalesce(sum(length), 0) FROM cove_bm25_chunks WHERE collection = %s AND doc_id = %s",
            (self.collection, doc_id),
        )
        chunks, length = cur.fetchone()
        if not chunks:
            return
        cur.execute(
            "WITH gone AS (SELECT t.lexeme AS term, count(*) AS n FROM cove_bm25_chunks c, unnest(c.terms) t "
            "WHERE c.collection = %s AND c.doc_id = %s GROUP BY t.lexeme) "
            "UPDATE cove_bm25_df d SET df = d.df - gone.n FROM gone WHERE d.collection = %s AND d.term = gone.term",
            (self.collection, doc_id, self.collection),
        )
        cur.execute("DELETE FROM cove_bm25_df WHERE collection = %s AND df <= 0", (self.collection,))
        cur.execute("DELETE FROM cove_bm25_chunks WHERE collection = %s AND doc_id = %s", (self.collection, doc_id))
        cur.execute(
            "UPDATE cove_bm25_meta SET chunks = chunks - %s, length = length - %s, changed = changed + %s "
            "WHERE collection = %s",
            (chunks, length, chunks, self.collection),
        )

    def _insert(self, cur, rows: Iterable[tuple[str, str, list[str]]], df: Counter[str] | None = None) -> None:
        """Chunks (id, doc id, terms) in, with the totals. Their terms' document frequencies are added to
        the df table, or counted into `df` for the caller to write once (a rebuild: one upsert per
        term instead of one per term and batch, which grew with the table)."""
        write_df = df is None
        df = Counter() if df is None else df
        chunks = length = 0
        with cur.copy("COPY cove_bm25_chunks (collection, id, doc_id, length, terms) FROM STDIN") as copy:
            for chunk_id, doc_id, terms in rows:
                cleaned = [_clean(t) for t in terms]
                df.update(set(cleaned[:MAX_POSITIONS]))  # what the tsvector keeps: what a delete subtracts
                chunks += 1
                length += len(cleaned)
                copy.write_row((self.collection, chunk_id, doc_id, len(cleaned), _as_tsvector(cleaned)))
        # Chunk numbers only grow: the collection's highest so far bounds the ones a query can meet
        # (found from the last one known up, through the index on the numbers).
        cur.execute(
            "UPDATE cove_bm25_meta m SET chunks = chunks + %s, length = length + %s, changed = changed + %s, "
            "last_num = greatest(m.last_num, (SELECT max(c.num) FROM cove_bm25_chunks c "
            "WHERE c.num > m.last_num AND c.collection = m.collection)) WHERE m.collection = %s",
            (chunks, length, chunks, self.collection),
        )
        if write_df:
            self._add_df(cur, df)

    def _add_df(self, cur, df: Counter[str]) -> None:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS cove_df_in (term text, df integer) ON COMMIT DROP")
        with cur.copy("COPY cove_df_in (term, df) FROM STDIN") as copy:
            for term, n in df.items():
                copy.write_row((term, n))
        cur.execute(
            "INSERT INTO cove_bm25_df (collection, term, df) SELECT %s, term, df FROM cove_df_in "
            "ON CONFLICT (collection, term) DO UPDATE SET df = cove_bm25_df.df + EXCLUDED.df",
            (self.collection,),
        )
        cur.execute("DROP TABLE cove_df_in")

    def _avgdl(self, cur) -> float:
        cur.execute("SELECT avgdl FROM cove_bm25_meta WHERE collection = %s", (self.collection,))
        return float(cur.fetchone()[0])

    def _compact_if_due(self, cur) -> bool:
        """Rebuild the blocks when the chunks written or deleted since pass `COMPACT_SHARE` of them (a
        small library is rebuilt at every write; a large one seldom, and its queries stay fast)."""
        cur.execute("SELECT changed, blocked FROM cove_bm25_meta WHERE collection = %s", (self.collection,))
        changed, blocked = cur.fetchone()
        if changed <= COMPACT_SHARE * blocked:
            return False
        self._build_blocks(cur)
        return True

    def _build_blocks(self, cur) -> None:
        """Every chunk's postings, impact-ordered into blocks, in one statement in the server; the
        average chunk length is fixed here for the weights until the next build."""
        cur.execute("SELECT chunks, length FROM cove_bm25_meta WHERE collection = %s", (self.collection,))
        chunks, length = cur.fetchone()
        avgdl = max(1.0, length / chunks) if chunks else 1.0
        cur.execute("SET LOCAL work_mem = '256MB'")  # the sort by term and weight: in memory where it fits
        cur.execute(
            "SELECT coalesce(min(num), 0), coalesce(max(num), 0) FROM cove_bm25_chunks WHERE collection = %s",
            (self.collection,),
        )
        first, last = cur.fetchone()
        if last - first + 1 > 2 * max(chunks, 1):  # numbers spread thin by rewrites: number the chunks afresh
            cur.execute("UPDATE cove_bm25_chunks SET num = DEFAULT WHERE collection = %s", (self.collection,))
            cur.execute("SELECT min(num), max(num) FROM cove_bm25_chunks WHERE collection = %s", (self.collection,))
            first, last = cur.fetchone()
        cur.execute("DELETE FROM cove_bm25_postings WHERE collection = %s", (self.collection,))
        cur.execute(_BLOCKS, {"collection": self.collection, "avgdl": avgdl})
        cur.execute(
            "UPDATE cove_bm25_meta SET avgdl = %s, blocked = chunks, changed = 0, first_num = %s, "
            "last_num = greatest(last_num, %s) WHERE collection = %s",
            (avgdl, first, last, self.collection),
        )

    def rebuild(self, ids: list[str], texts: list[str], generation: str) -> None:
        """Replace every row with these chunks (`lexical_text`s) as of `generation`."""
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cur:
            self._mark_dirty(cur)
            self._clear(cur)
            df: Counter[str] = Counter()
            for start in range(0, len(ids), WRITE_BATCH):
                batch_ids, batch_texts = ids[start : start + WRITE_BATCH], texts[start : start + WRITE_BATCH]
                terms = chunk_terms(batch_texts)
                self._insert(cur, [(i, chunk_doc_id(i), t) for i, t in zip(batch_ids, terms, strict=True)], df)
            self._add_df(cur, df)
            self._build_blocks(cur)
            cur.execute(
                "UPDATE cove_bm25_meta SET generation = %s, layout = %s WHERE collection = %s",
                (generation, LAYOUT, self.collection),
            )

    def sync(self, store, generation: str) -> None:
        """Rebuild from the store when the rows do not belong to `generation` (one instance at a time)."""
        if self.generation == generation:
            return
        with self._cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            try:
                if self.generation != generation:  # another instance may have rebuilt it while we waited
                    ids, texts, metadatas = store.all_chunks()
                    self.rebuild(ids, [lexical_text(t, m) for t, m in zip(texts, metadatas, strict=True)], generation)
            finally:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))

    # --- search -----------------------------------------------------------------------------------
    def search(self, query: str, k: int = 20, doc_ids: set[str] | None = None) -> list[LexicalHit]:
        """BM25 top-k chunks; with `doc_ids`, only chunks of those documents."""
        if k <= 0:
            return []
        conn = self._connection()
        # One snapshot for the statistics, the postings and the scores: a write committing mid-query
        # cannot mix two states of the library.
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            scorer = self.scorer(cur, query)
            if scorer is None:
                return []
            ranked = scorer.documents(sorted(doc_ids)) if doc_ids is not None else ThresholdSearch(scorer, k).run()
        ranked.sort(key=lambda hit: (-hit[1], hit[0]))
        return [LexicalHit(chunk_id, score) for chunk_id, score in ranked[:k] if score > 0]

    def scorer(self, cur, query: str) -> _Scorer | None:
        """The query's terms with their idf and the collection's statistics, in one read (None: no
        term of the query is in the library)."""
        counts = Counter(_clean(t) for t in chunk_terms([query])[0])
        if not counts:
            return None
        cur.execute(
            "SELECT m.chunks, m.length, m.avgdl, m.first_num, m.last_num, d.term, d.df FROM cove_bm25_meta m "
            "LEFT JOIN cove_bm25_df d ON d.collection = m.collection AND d.term = ANY(%s) "
            "WHERE m.collection = %s",
            (sorted(counts), self.collection),
        )
        rows = cur.fetchall()
        if not rows or not rows[0][0]:
            return None
        total, length, blocks_avgdl, first_num, last_num = (float(v) for v in rows[0][:5])
        # As bm25s does: a term asked twice counts twice. A term no chunk holds adds nothing (a df
        # above the chunk count, which only a damaged table holds, would make its idf negative).
        idf = {t: counts[t] * math.log(1 + (total - n + 0.5) / (n + 0.5)) for *_, t, n in rows if t and n <= total}
        if not idf:
            return None
        avgdl = (max(1.0, length / total), blocks_avgdl)
        return _Scorer(cur, self.collection, idf, avgdl, (int(first_num), int(last_num)))


class _Scorer:
    """The reads one query makes: exact scores of chunks, and postings blocks."""

    def __init__(
        self, cur, collection: str, idf: dict[str, float], avgdl: tuple[float, float], nums: tuple[int, int]
    ) -> None:
        self.cur = cur
        self.idf = idf
        now, blocks = avgdl
        # Exact scores use today's average chunk length; the stored weights, the one of their build.
        # A weight moves by at most this factor between the two (tf / (tf + c + x / avgdl) with
        # avgdl times r lies between w * min(1, r) and w * max(1, r)): the search widens its bounds so.
        self.drift = now / blocks
        self.nums = nums  # the collection's first and last chunk numbers
        self.blocks_read = 0  # postings blocks read (for tests)
        self._params = {"collection": collection, "terms": list(idf), "idf": list(idf.values()), "avgdl": now}

    def exact(self, nums: list[int]) -> dict[int, tuple[str, float]]:
        """{num: (chunk id, BM25 score)} of the chunks that still exist among `nums`."""
        self.cur.execute(_SCORES.format(source=_BY_NUM), {**self._params, "nums": nums})
        return {num: (chunk_id, float(score)) for num, chunk_id, score in self.cur.fetchall()}

    def documents(self, doc_ids: list[str]) -> list[tuple[str, float]]:
        """Every chunk of these documents holding a query term, with its score."""
        self.cur.execute(_SCORES.format(source=_BY_DOC), {**self._params, "docs": doc_ids})
        return [(chunk_id, float(score)) for _, chunk_id, score in self.cur.fetchall()]

    def blocks(self, wanted: dict[str, tuple[int, int]], delta: bool) -> list[tuple[str, int, bytes]]:
        """Blocks `first` to `first + count - 1` of each term in `wanted` ({term: (first, count)}), and
        with `delta` every term's delta rows (block -1), as (term, block, packed postings)."""
        terms = list(wanted)
        firsts = [first for first, _ in wanted.values()]
        counts = [count for _, count in wanted.values()]
        if delta:
            terms, firsts, counts = terms + list(self.idf), firsts + [-1] * len(self.idf), counts + [1] * len(self.idf)
        self.cur.execute(
            "SELECT p.term, p.block, p.postings FROM unnest(%(terms)s::text[], %(firsts)s::int[], %(counts)s::int[]) "
            "AS w(term, first, count) JOIN cove_bm25_postings p ON p.collection = %(collection)s "
            "AND p.term = w.term AND p.block >= w.first AND p.block < w.first + w.count ORDER BY p.term, p.block",
            {"collection": self._params["collection"], "terms": terms, "firsts": firsts, "counts": counts},
            binary=True,
        )
        rows = self.cur.fetchall()
        self.blocks_read += sum(1 for row in rows if row[1] >= 0)
        return rows


class ThresholdSearch:
    """The exact BM25 top-k from impact-ordered postings, without scoring every chunk that holds a
    query term (Fagin's threshold algorithm, "no random access" variant, in numpy).

    Each step reads the next blocks of every term not read to its end (four times as many as the
    step before). A chunk seen so far has a partial score: its lower bound. What it could still gain is
    bounded by the weight at which each other term's unread postings start (that term's *frontier*):
    partial + those frontiers is its upper bound. The top k is settled when the k-th best lower bound
    is at least what a chunk seen nowhere yet could reach (the sum of the frontiers), and at most
    `LOOKUP_LIMIT` chunks have an upper bound that reaches it. Only then are scores looked up, exactly,
    for those chunks (their ids come with them; a chunk deleted since the blocks were built is dropped
    and the search goes on).
    Delta rows (chunks written since the blocks were built) are read whole at the first step: their
    sums are complete. Stored weights are of the last block build's average chunk length, exact
    scores of today's: bounds are widened by the most that can move a weight (`_Scorer.drift`)."""

    def __init__(self, scorer: _Scorer, k: int) -> None:
        import numpy as np

        self.np = np
        self.scorer = scorer
        self.k = k
        self.terms = list(scorer.idf)
        self.idf = np.array([scorer.idf[t] for t in self.terms])
        self.index = {t: i for i, t in enumerate(self.terms)}
        self.next_block = [0] * len(self.terms)
        # No unread posting of a term weighs more than its frontier; before any is read: 1, the most
        # a BM25 weight tf / (tf + k1 (...)) can approach.
        self.frontier = np.ones(len(self.terms))
        self.width = 1  # blocks per term the next step reads
        # Per chunk, by its number (from the collection's first, up to its last: a block build keeps
        # them dense): the partial score, which terms it was seen in, whether it is a delta chunk.
        self.first, last = scorer.nums
        span = max(0, last - self.first + 1)
        self.lower = np.zeros(span)
        self.seen = np.zeros((len(self.terms), span), dtype=bool)  # term-major: one row per term
        self.complete = np.zeros(span, dtype=bool)  # delta chunks: nothing more to add
        self.gone = np.zeros(span, dtype=bool)  # looked up and not found: deleted since the block build
        # Partial sums of stored weights, times these, bound the true partial scores (see drift).
        self.low = min(1.0, scorer.drift) / _ROUNDING
        self.high = max(1.0, scorer.drift) * _ROUNDING

    def run(self) -> list[tuple[str, float]]:
        first = True
        while True:
            if first or (self.frontier > 0).any():
                self._read_blocks(first)
                first = False
            settled = self._settled()
            if settled is None:
                continue
            found = self.scorer.exact([int(n) + self.first for n in settled])
            missing = [n for n in settled if int(n) + self.first not in found]
            if not missing:
                return list(found.values())
            self.gone[missing] = True  # deleted since the blocks were built: look again without them

    def _read_blocks(self, with_delta: bool) -> None:
        np = self.np
        # Terms whose unread postings could add next to nothing (a word in every chunk: idf ~ 0) are
        # read only once the others are down to their level; until then their bound covers them.
        gain = self.idf * self.frontier
        open_terms = [t for t, i in self.index.items() if gain[i] > 0 and gain[i] >= MINOR_TERM * gain.max()]
        wanted = {t: (self.next_block[self.index[t]], self.width) for t in open_terms}
        read_to = {}
        for term, block, packed in self.scorer.blocks(wanted, with_delta):
            i = self.index[term]
            postings = np.frombuffer(packed, dtype=POSTING)
            at = postings["num"].astype(np.int64) - self.first
            inside = (at >= 0) & (at < len(self.lower))  # all of them, in one snapshot: checked all the same
            at = at[inside]
            self.lower[at] += self.idf[i] * postings["weight"][inside].astype(np.float64)
            self.seen[i, at] = True
            if block < 0:
                self.complete[at] = True
                continue
            read_to[term] = (block, postings["weight"][-1] if len(postings) == BLOCK else 0.0)
        for term in open_terms:
            i = self.index[term]
            block, last = read_to.get(term, (None, 0.0))
            full = block is not None and block == self.next_block[i] + self.width - 1
            self.frontier[i] = min(1.0, float(last) * self.high) if full else 0.0  # else: no block left
            self.next_block[i] += self.width
        self.width *= 4  # few steps: each costs a pass over the chunks seen

    def _settled(self) -> list[int] | None:
        """The top k (and any chunk tied with it), as offsets from the first chunk number, once no
        other chunk can enter it; None while more blocks must be read."""
        np = self.np
        at = np.flatnonzero((self.lower > 0) & ~self.gone)  # every weight and idf is > 0
        partial = self.lower[at]
        open_gain = self.idf * np.where(self.frontier > 0, self.frontier, 0.0)
        unseen = float(open_gain.sum())
        if len(at) <= self.k:
            return list(at) if unseen <= 0 else None
        lower = partial * self.low
        kth = float(np.partition(lower, len(lower) - self.k)[len(lower) - self.k])
        if unseen > kth:  # a chunk seen nowhere yet could still beat the k-th: read on
            return None
        near = partial * self.high + unseen >= kth  # the others cannot reach the k-th best, whatever they lack
        at, partial = at[near], partial[near]
        rest = np.zeros(len(at))  # what each chunk could still gain: the open terms it was not seen in
        for i in np.flatnonzero(open_gain > 0):
            np.add(rest, open_gain[i], out=rest, where=~self.seen[i, at])
        rest[self.complete[at]] = 0.0
        contenders = partial * self.high + rest >= kth
        if unseen > 0 and contenders.sum() > max(LOOKUP_LIMIT, 4 * self.k):  # cheaper to read on
            return None
        return list(at[contenders])


def _as_tsvector(terms: list[str]) -> str:
    """The tsvector literal of a token list: each term with its positions (1-based, PostgreSQL keeps
    up to 256 per term and positions up to 16383)."""
    positions: dict[str, list[int]] = {}
    for at, term in enumerate(terms[:MAX_POSITIONS], start=1):
        held = positions.setdefault(term, [])
        if len(held) < 256:
            held.append(at)
    return " ".join(f"{_lexeme(t)}:{','.join(map(str, p))}" for t, p in positions.items())


def _redacted(message: str, url: str) -> str:
    """An error message without the URL's password."""
    from urllib.parse import urlsplit

    password = urlsplit(url).password
    return message.replace(password, "***") if password else message
