"""S3 (and S3-compatible stores: MinIO, R2, moto) as a source and a sink, over aioboto3.

Source `s3://bucket/prefix/`: every object under the prefix, listed page by page in key order,
parsed as JSON Lines, CSV or JSON by its suffix (or `extract.format`). Objects are streamed, never
read whole: the parsers of core.connectors.parsing run in a worker thread and pull the body a
chunk at a time from the event loop. Keys ending in "/" (folder markers) and objects whose name
starts with "_" or "." (`_SUCCESS`, `.keep`) are skipped, as Spark and Hadoop do.

Sink `s3://bucket/prefix/`: each batch becomes one JSON Lines object,
`prefix/<run_id>/part-00001.jsonl`, `part-00002.jsonl`, ... The name depends only on the run and
the batch's number, so a retried batch overwrites its part instead of duplicating it. `commit()`
writes `prefix/<run_id>/_SUCCESS`; with `mode: replace` it also deletes every other object under
the prefix; `abort()` deletes the run's parts. Commits hold the prefix's lock
(core.connectors.object_lock): a run whose parts a replace deleted while it ran fails, resumably,
instead of writing `_SUCCESS` over what is left.

Endpoint, region and keys come from `endpoint_url:`, `region:`, `aws_access_key_id:`... in the
pipeline (usually `${NAME}` placeholders), else from the AWS chain and AWS_ENDPOINT_URL_S3.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from core.connectors.base import Sink, Source
from core.connectors.object_lock import ObjectCommitLock
from core.connectors.parsing import FORMATS, PARSERS, Row, check_encoding, drain_in_thread, first_line
from core.errors import ConnectorError, DestinationBusy, LoadError

if TYPE_CHECKING:
    from core.connectors.registry import ParsedURI
    from core.spec import LoadedSpec

_READ_SIZE = 1 << 20  # bytes per body read: one loop round trip per MB
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".json": "json"}
_DELETE_CHUNK = 1000  # DeleteObjects takes at most 1000 keys
LIST_PAGE_SIZE = 1000  # keys per ListObjectsV2 page (S3's maximum)
_CONFIG = AioConfig(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10,
                    read_timeout=60)


def split_s3(uri: "ParsedURI") -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix`."""
    bucket, _, prefix = uri.target.partition("/")
    if not bucket:
        raise ConnectorError(f"{uri.display}: no bucket named (write s3://bucket/prefix/)")
    return bucket, prefix


def client_options(spec: Any) -> dict[str, Any]:
    """boto's client arguments from the pipeline's section; what is unset comes from the chain."""
    options = {"endpoint_url": spec.endpoint_url, "region_name": spec.region,
               "aws_access_key_id": spec.aws_access_key_id,
               "aws_secret_access_key": spec.aws_secret_access_key,
               "aws_session_token": spec.aws_session_token}
    return {name: value for name, value in options.items() if value}


def describe_error(exc: BaseException) -> str:
    """One line for an S3 failure, without credentials (boto messages never carry them)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")) or first_line(exc)
        if code == "NoSuchBucket":
            return "no such bucket"
        if code in ("404", "NotFound", "NoSuchKey"):
            return "not found"
        if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId",
                    "SignatureDoesNotMatch"):
            return f"access denied ({code}): {message}"
        return f"{code}: {message}" if code else message
    if isinstance(exc, NoCredentialsError):
        return ("no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, "
                "or aws_access_key_id: and aws_secret_access_key: with ${NAME} placeholders)")
    return first_line(exc)


def _is_hidden(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return not name or name[0] in "_."


class _ObjectClient:
    """An aioboto3 S3 client kept open for a source's or a sink's lifetime."""

    def __init__(self, spec: Any) -> None:
        self._options = client_options(spec)
        self._stack: contextlib.AsyncExitStack | None = None
        self.client: Any = None

    async def start(self) -> Any:
        if self.client is None:
            stack = contextlib.AsyncExitStack()
            session = aioboto3.Session()
            self.client = await stack.enter_async_context(
                session.client("s3", config=_CONFIG, **self._options))
            self._stack = stack
        return self.client

    async def close(self) -> None:
        stack, self._stack, self.client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()


# ---------------------------------------------------------------- source


class _BodyReader(io.RawIOBase):
    """An object's body as a blocking binary stream for a parser in a worker thread: each read
    asks the event loop for the next chunk of the HTTP body."""

    def __init__(self, body: Any, loop: asyncio.AbstractEventLoop, where: str) -> None:
        self._body = body
        self._loop = loop
        self._where = where

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        future = asyncio.run_coroutine_threadsafe(self._body.read(len(buffer)), self._loop)
        try:
            data = future.result()
        except Exception as exc:  # the body's own failure (a reset, a timeout), or a cancelled run
            raise ConnectorError(f"s3 source {self._where}: reading failed: "
                                 f"{describe_error(exc)}") from exc
        size = len(data)
        buffer[:size] = data
        return size


class S3Source(Source):
    """Every object under `s3://bucket/prefix`, in key order, streamed through the row parsers."""

    def __init__(self, loaded: "LoadedSpec", uri: "ParsedURI") -> None:
        super().__init__(loaded, uri)
        self.bucket, self.prefix = split_s3(uri)
        self.encoding = check_encoding(self.spec.encoding or "utf-8")
        self.format = self.spec.format
        self._chunk = min(max(self.batch_size, 64), 2048)
        self._objects = _ObjectClient(self.spec)

    def _where(self, key: str | None = None) -> str:
        return f"s3://{self.bucket}/{self.prefix if key is None else key}"

    def _format_of(self, key: str) -> str:
        if self.format:
            return self.format
        lowered = key.lower()
        for suffix, kind in _SUFFIXES.items():
            if lowered.endswith(suffix):
                return kind
        raise ConnectorError(f"s3 source {self._where(key)}: cannot tell the format from the name "
                             f"(known suffixes: {', '.join(_SUFFIXES)}); set extract.format "
                             f"to one of {', '.join(FORMATS)}")

    async def _keys(self, client: Any) -> AsyncIterator[str]:
        paginator = client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix,
                                                 PaginationConfig={"PageSize": LIST_PAGE_SIZE}):
                for item in page.get("Contents", ()):
                    key = item["Key"]
                    if not _is_hidden(key):
                        yield key
        except (ClientError, BotoCoreError) as exc:
            raise ConnectorError(f"s3 source {self._where()}: cannot list: "
                                 f"{describe_error(exc)}") from exc

    async def _rows(self) -> AsyncGenerator[Row, None]:
        client = await self._objects.start()
        try:
            async for key in self._keys(client):
                kind = self._format_of(key)
                async for row in self._object_rows(client, key, kind):
                    yield row
        finally:
            await self._objects.close()

    async def _object_rows(self, client: Any, key: str, kind: str) -> AsyncGenerator[Row, None]:
        where = self._where(key)
        try:
            response = await client.get_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise ConnectorError(f"s3 source {where}: cannot read: {describe_error(exc)}") from exc
        body = response["Body"]
        stream = io.BufferedReader(_BodyReader(body, asyncio.get_running_loop(), where), _READ_SIZE)
        rows = drain_in_thread(PARSERS[kind](stream, name=key, where=where, encoding=self.encoding),
                               self._chunk)
        try:
            async for row in rows:
                yield row
        finally:
            await rows.aclose()
            body.close()

    async def aclose(self) -> None:
        await self._objects.close()


# ---------------------------------------------------------------- sink


def _safe_run_id(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(run_id))[:64] or "run"


class S3Sink(Sink):
    """Each batch one JSON Lines object under `prefix/<run_id>/`, named by its number.

    A resumed run withdraws its folder and writes it again, every record from the history store
    (no model call for those): parts are numbered per attempt, so what an earlier attempt wrote
    must not linger beside the new parts, or a record could appear in two of them.
    """

    resume_policy = "rewrite"

    def __init__(self, loaded: "LoadedSpec", uri: "ParsedURI") -> None:
        super().__init__(loaded, uri)
        self.bucket, prefix = split_s3(uri)
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self._objects = _ObjectClient(self.spec)
        self._lock = asyncio.Lock()
        self._parts = 0
        self._run_prefix = self.prefix

    def _where(self, key: str | None = None) -> str:
        return f"s3://{self.bucket}/{self.prefix if key is None else key}"

    def part_key(self, number: int) -> str:
        return f"{self._run_prefix}part-{number:05d}.jsonl"

    async def open(self, run_id: str) -> None:
        await super().open(run_id)
        if self.spec.mode == "upsert":
            raise ConnectorError(f"s3 destination {self._where()}: mode upsert needs a sqlite or "
                                 "postgres destination")
        if self.spec.mode == "replace" and not self.prefix:
            raise ConnectorError(f"s3 destination {self._where()}: mode replace deletes every other "
                                 "object under the prefix, so it needs one (s3://bucket/prefix/)")
        self._run_prefix = f"{self.prefix}{_safe_run_id(run_id)}/"
        self._parts = 0
        client = await self._objects.start()
        try:
            await client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            await self._objects.close()
            reason = describe_error(exc)
            raise ConnectorError(f"s3 destination {self._where()}: cannot write: "
                                 f"{'no such bucket' if reason == 'not found' else reason}") from exc

    async def withdraw(self) -> None:
        async with self._lock:
            client = self._objects.client
            if client is None:
                raise ConnectorError(f"s3 destination {self._where()}: withdraw() before open()")
            try:
                await self._delete_under(client, self._run_prefix)
            except (ClientError, BotoCoreError) as exc:
                raise ConnectorError(f"s3 destination {self._where(self._run_prefix)}: cannot "
                                     f"remove the earlier attempt's parts: "
                                     f"{describe_error(exc)}") from exc
            self._parts = 0

    async def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        async with self._lock:
            client = self._objects.client
            if client is None:
                raise ConnectorError(f"s3 destination {self._where()}: write() before open()")
            try:
                text = "".join([json.dumps(row, ensure_ascii=False, default=str,
                                           allow_nan=False) + "\n"
                                for row in rows])
                payload = text.encode("utf-8")
            except (TypeError, ValueError) as exc:  # a surrogate cannot be UTF-8: UnicodeEncodeError
                raise LoadError(f"s3 destination {self._where()}: cannot encode a row: "
                                f"{first_line(exc)}") from exc
            # The number moves on only once the part is stored: a batch that failed leaves its
            # number to the next one, so part numbers have no gaps.
            key = self.part_key(self._parts + 1)
            try:
                await client.put_object(Bucket=self.bucket, Key=key, Body=payload,
                                        ContentType="application/x-ndjson")
            except (ClientError, BotoCoreError) as exc:
                raise LoadError(f"s3 destination {self._where(key)}: cannot write: "
                                f"{describe_error(exc)}") from exc
            self._parts += 1

    async def commit(self) -> None:
        async with self._lock:
            client = self._objects.client
            if client is None:
                raise ConnectorError(f"s3 destination {self._where()}: commit() without open()")
            # A replace deletes the parts of runs still writing under the prefix: under the
            # prefix's commit lock, such a run finds that out before its _SUCCESS would vouch for
            # a folder that lost parts, and the replace cannot delete between its check and it.
            lock = ObjectCommitLock(client, self.bucket, self.prefix)
            try:
                await lock.acquire(run_id=str(self.run_id), timeout_s=self.spec.lock_timeout_s,
                                   what=f"s3 destination {self._where()}", on_wait=self.notify)
                try:
                    if self.spec.mode != "replace":
                        await self._check_parts(client)
                    await client.put_object(Bucket=self.bucket,
                                            Key=f"{self._run_prefix}_SUCCESS", Body=b"")
                    if self.spec.mode == "replace":
                        # Published first, then the others go: a crash in between leaves the
                        # old rows beside the new (a resume's commit deletes them), never none.
                        await self._delete_under(client, self.prefix, keep=self._run_prefix,
                                                 spare=lock.key)
                finally:
                    await lock.release()
            except DestinationBusy:
                # Nothing published by this commit: the run's parts go (as abort would, the
                # client is closing) and --resume writes them all again — unless an earlier
                # attempt of the run published this folder already.
                with contextlib.suppress(ClientError, BotoCoreError):
                    if not await self._published(client):
                        await self._delete_under(client, self._run_prefix)
                raise
            except (ClientError, BotoCoreError) as exc:
                raise ConnectorError(f"s3 destination {self._where()}: cannot commit: "
                                     f"{describe_error(exc)}") from exc
            finally:
                await self._objects.close()

    async def _published(self, client: Any) -> bool:
        try:
            await client.head_object(Bucket=self.bucket, Key=f"{self._run_prefix}_SUCCESS")
        except ClientError:
            return False
        return True

    async def _check_parts(self, client: Any) -> None:
        """Every part this run wrote is still there (a replace by another run deletes them)."""
        paginator = client.get_paginator("list_objects_v2")
        present = 0
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._run_prefix,
                                             PaginationConfig={"PageSize": LIST_PAGE_SIZE}):
            for item in page.get("Contents", ()):
                name = item["Key"][len(self._run_prefix):]
                present += name.startswith("part-") and name.endswith(".jsonl")
        if present < self._parts:
            raise DestinationBusy(
                f"s3 destination {self._where()}: {self._parts - present} of this run's "
                f"{self._parts} parts were deleted by another run's replace while it ran; "
                f"nothing was published, --resume writes them again")

    async def abort(self) -> None:
        async with self._lock:
            client = self._objects.client
            if client is None:
                return
            try:
                await self._delete_under(client, self._run_prefix)
            except (ClientError, BotoCoreError):
                pass  # parts left behind are this run's only, under its own folder
            finally:
                await self._objects.close()

    async def _delete_under(self, client: Any, prefix: str, keep: str | None = None,
                            spare: str | None = None) -> None:
        """Delete every object under `prefix`, except those under `keep` and `spare` itself."""
        paginator = client.get_paginator("list_objects_v2")
        doomed: list[str] = []
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix,
                                             PaginationConfig={"PageSize": LIST_PAGE_SIZE}):
            for item in page.get("Contents", ()):
                if (keep is None or not item["Key"].startswith(keep)) and item["Key"] != spare:
                    doomed.append(item["Key"])
            # Listing resumes after the last key it returned, so deleting as we go is safe.
            while len(doomed) >= _DELETE_CHUNK:
                await self._delete(client, doomed[:_DELETE_CHUNK])
                doomed = doomed[_DELETE_CHUNK:]
        if doomed:
            await self._delete(client, doomed)

    async def _delete(self, client: Any, keys: list[str]) -> None:
        answer = await client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
        errors = answer.get("Errors") or []
        if errors:
            first = errors[0]
            raise ConnectorError(f"s3 destination {self._where(first.get('Key'))}: cannot delete: "
                                 f"{first.get('Code')}: {first.get('Message')}")
