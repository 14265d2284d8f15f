"""The lexical (BM25) side of the index on a PostgreSQL server, for libraries that outgrow one machine.

The embedded BM25 index (`cove.lexical`) is a copy every Cove process holds in RAM: at a million
chunks that is ~17 GB per process and a four-minute rebuild after every change. With
`lexical.postgres_url` set, the chunks' terms live in PostgreSQL instead, beside the Chroma server:
a Cove process keeps nothing of them in memory, and a change is written once, by the writer.

What is stored: per chunk its id, document and term count, and a `tsvector` of Cove's own tokens
(the same normalising, stop words and stemmer as the embedded index, `cove.lexical.tokenize`, put
in with the `simple` configuration so PostgreSQL changes nothing); per term its document frequency.
A query is scored by BM25 in the server, exactly: candidates are the chunks holding the query's
rarest terms (a GIN index finds them), then each candidate's term frequencies come out of its
`tsvector`. So search fuses as today (`cove.retrieve`): only the engine under the BM25 ranking moved.

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

K1, B = 1.5, 0.75  # bm25s's defaults: the embedded index ranks with the same
CANDIDATE_DF = 20_000  # a query's candidates: chunks holding its rarest terms, up to about this many
WRITE_BATCH = 2_000
_LOCK_KEY = 0x636F7665  # "cove": the advisory lock a rebuild holds

SCHEMA = """
CREATE TABLE IF NOT EXISTS cove_lexical_chunks (
    collection text NOT NULL, id text NOT NULL, doc_id text NOT NULL, length integer NOT NULL,
    terms tsvector NOT NULL, PRIMARY KEY (collection, id));
CREATE INDEX IF NOT EXISTS cove_lexical_terms_gin ON cove_lexical_chunks USING gin (terms);
CREATE INDEX IF NOT EXISTS cove_lexical_doc ON cove_lexical_chunks (collection, doc_id);
CREATE TABLE IF NOT EXISTS cove_lexical_df (
    collection text NOT NULL, term text NOT NULL, df integer NOT NULL, PRIMARY KEY (collection, term));
CREATE TABLE IF NOT EXISTS cove_lexical_meta (
    collection text PRIMARY KEY, generation text NOT NULL, chunks bigint NOT NULL, length bigint NOT NULL,
    tokenizer integer NOT NULL);
"""


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server of `lexical.postgres_url` cannot be reached."""


def chunk_terms(texts: list[str]) -> list[list[str]]:
    """Cove's BM25 tokens of each text (see `cove.lexical.tokenize`)."""
    return [list(tokens) for tokens in tokenize(texts, as_strings=True)] if texts else []


def _lexeme(term: str) -> str:
    """A token as a quoted tsquery/tsvector lexeme: nothing in a document's text can become an operator."""
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
        with self._cursor() as cur:
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
        """The store generation the rows belong to (None: never built, built by another tokenizer, or dirty)."""
        with self._cursor() as cur:
            cur.execute("SELECT generation, tokenizer FROM cove_lexical_meta WHERE collection = %s", (self.collection,))
            row = cur.fetchone()
        if row is None or row[1] != TOKENIZER_VERSION or row[0].startswith("dirty:"):
            return None
        return row[0]

    def __len__(self) -> int:
        with self._cursor() as cur:
            cur.execute("SELECT chunks FROM cove_lexical_meta WHERE collection = %s", (self.collection,))
            row = cur.fetchone()
        return int(row[0]) if row else 0

    # --- writing (the writer holds the home's writer lock) ----------------------------------------
    def _mark_dirty(self, cur) -> None:
        cur.execute(
            "INSERT INTO cove_lexical_meta VALUES (%s, %s, 0, 0, %s) "
            "ON CONFLICT (collection) DO UPDATE SET generation = EXCLUDED.generation",
            (self.collection, self._dirty, TOKENIZER_VERSION),
        )

    def advance(self, previous: str, token: str) -> None:
        """The store moved from generation `previous` to `token` (`ChunkStore.mark_changed`): the
        rows belong to `token` too if they belonged to `previous`, or if this writer wrote them."""
        with self._cursor() as cur:
            cur.execute(
                "UPDATE cove_lexical_meta SET generation = %s WHERE collection = %s AND generation IN (%s, %s)",
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

    def delete_document(self, doc_id: str) -> None:
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cur:
            self._mark_dirty(cur)
            self._delete(cur, doc_id)

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
            for table in ("cove_lexical_chunks", "cove_lexical_df", "cove_lexical_meta"):
                cur.execute(f"DELETE FROM {table} WHERE collection = ANY(%s)", (names,))  # table: a constant

    def _clear(self, cur) -> None:
        cur.execute("DELETE FROM cove_lexical_chunks WHERE collection = %s", (self.collection,))
        cur.execute("DELETE FROM cove_lexical_df WHERE collection = %s", (self.collection,))
        cur.execute("UPDATE cove_lexical_meta SET chunks = 0, length = 0 WHERE collection = %s", (self.collection,))

    def _delete(self, cur, doc_id: str) -> None:
        cur.execute(
            "SELECT count(*), coalesce(sum(length), 0) FROM cove_lexical_chunks WHERE collection = %s AND doc_id = %s",
            (self.collection, doc_id),
        )
        chunks, length = cur.fetchone()
        if not chunks:
            return
        cur.execute(
            "WITH gone AS (SELECT t.lexeme AS term, count(*) AS n FROM cove_lexical_chunks c, unnest(c.terms) t "
            "WHERE c.collection = %s AND c.doc_id = %s GROUP BY t.lexeme) "
            "UPDATE cove_lexical_df d SET df = d.df - gone.n FROM gone WHERE d.collection = %s AND d.term = gone.term",
            (self.collection, doc_id, self.collection),
        )
        cur.execute("DELETE FROM cove_lexical_df WHERE collection = %s AND df <= 0", (self.collection,))
        cur.execute("DELETE FROM cove_lexical_chunks WHERE collection = %s AND doc_id = %s", (self.collection, doc_id))
        cur.execute(
            "UPDATE cove_lexical_meta SET chunks = chunks - %s, length = length - %s WHERE collection = %s",
            (chunks, length, self.collection),
        )

    def _insert(self, cur, rows: Iterable[tuple[str, str, list[str]]], df: Counter[str] | None = None) -> None:
        """Chunks (id, doc id, terms) in, with the totals. Their terms' document frequencies are added to
        the df table, or counted into `df` for the caller to write once (a rebuild: one upsert per
        term instead of one per term and batch, which grew with the table)."""
        write_df = df is None
        df = Counter() if df is None else df
        chunks = length = 0
        with cur.copy("COPY cove_lexical_chunks (collection, id, doc_id, length, terms) FROM STDIN") as copy:
            for chunk_id, doc_id, terms in rows:
                cleaned = [_clean(t) for t in terms]
                df.update(set(cleaned))
                chunks += 1
                length += len(cleaned)
                copy.write_row((self.collection, chunk_id, doc_id, len(cleaned), _as_tsvector(cleaned)))
        cur.execute(
            "UPDATE cove_lexical_meta SET chunks = chunks + %s, length = length + %s WHERE collection = %s",
            (chunks, length, self.collection),
        )
        if write_df:
            self._add_df(cur, df)

    def _add_df(self, cur, df: Counter[str]) -> None:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS cove_df_in (term text, df integer) ON COMMIT DROP")
        with cur.copy("COPY cove_df_in (term, df) FROM STDIN") as copy:
            for term, n in df.items():
                copy.write_row((term, n))
        cur.execute(
            "INSERT INTO cove_lexical_df (collection, term, df) SELECT %s, term, df FROM cove_df_in "
            "ON CONFLICT (collection, term) DO UPDATE SET df = cove_lexical_df.df + EXCLUDED.df",
            (self.collection,),
        )
        cur.execute("DROP TABLE cove_df_in")

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
            cur.execute(
                "UPDATE cove_lexical_meta SET generation = %s WHERE collection = %s", (generation, self.collection)
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
        terms = sorted({_clean(t) for t in chunk_terms([query])[0]})
        if not terms or k <= 0:
            return []
        with self._cursor() as cur:
            cur.execute(
                "SELECT chunks, length FROM cove_lexical_meta WHERE collection = %s", (self.collection,)
            )
            row = cur.fetchone()
            if not row or not row[0]:
                return []
            total, length = int(row[0]), int(row[1])
            cur.execute(
                "SELECT term, df FROM cove_lexical_df WHERE collection = %s AND term = ANY(%s)",
                (self.collection, terms),
            )
            df = dict(cur.fetchall())
            if not df:
                return []
            idf = {t: math.log(1 + (total - n + 0.5) / (n + 0.5)) for t, n in df.items()}
            wanted = _candidate_terms(df) if doc_ids is None else sorted(df)
            where, params = "c.collection = %s AND c.terms @@ to_tsquery('simple', %s)", [
                self.collection, " | ".join(_lexeme(t) for t in wanted)]  # fmt: skip
            if doc_ids is not None:
                where += " AND c.doc_id = ANY(%s)"
                params.append(sorted(doc_ids))
            # Each candidate's tsvector cut down to the query's terms (setweight marks them, ts_filter
            # keeps them) in the server's C code, then BM25 over their term frequencies.
            cur.execute(
                "SELECT c.id, sum(q.idf * (array_length(t.positions, 1) * %s) / "
                "(array_length(t.positions, 1) + %s * (1 - %s + %s * c.length / %s))) AS score "
                "FROM cove_lexical_chunks c "
                "CROSS JOIN LATERAL unnest(ts_filter(setweight(c.terms, 'A', %s::text[]), '{a}')) t "
                "JOIN unnest(%s::text[], %s::float8[]) AS q(term, idf) ON q.term = t.lexeme "
                f"WHERE {where} GROUP BY c.id ORDER BY score DESC, c.id LIMIT %s",
                [K1 + 1, K1, B, B, max(1.0, length / total), list(idf), list(idf), list(idf.values()), *params, k],
            )
            return [LexicalHit(chunk_id, float(score)) for chunk_id, score in cur.fetchall() if score > 0]


def _candidate_terms(df: dict[str, int]) -> list[str]:
    """The query's rarest terms, up to about `CANDIDATE_DF` chunks holding them (at least one term):
    a chunk holding none of them holds only common terms, and BM25 ranks it low anyway."""
    chosen, covered = [], 0
    for term in sorted(df, key=lambda t: (df[t], t)):
        if chosen and covered + df[term] > CANDIDATE_DF:
            break
        chosen.append(term)
        covered += df[term]
    return chosen


def _as_tsvector(terms: list[str]) -> str:
    """The tsvector literal of a token list: each term with its positions (1-based, PostgreSQL keeps
    up to 256 per term and positions up to 16383)."""
    positions: dict[str, list[int]] = {}
    for at, term in enumerate(terms[:16383], start=1):
        held = positions.setdefault(term, [])
        if len(held) < 256:
            held.append(at)
    return " ".join(f"{_lexeme(t)}:{','.join(map(str, p))}" for t, p in positions.items())


def _redacted(message: str, url: str) -> str:
    """An error message without the URL's password."""
    from urllib.parse import urlsplit

    password = urlsplit(url).password
    return message.replace(password, "***") if password else message
