"""The model repository live: a real ``swin-serve`` serving a directory of real exported
micro models, changed under it and reloaded by SIGHUP while one model is kept under load.

The orderings asserted are causal, never timed: a request sent after the index showed the swap
must reach the new model; a request answered before the new file existed must come from the old
one; a client that has seen the new model never sees the old one again.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest

from swin_serve.server.runtime.model_file import SETTLE_S
from tests.support.live_server import LiveServer, start_server

NEW_HEAD = re.compile(r"class_[0-6]")  # the 7-class export's labels
TIMEOUT_S = 90.0  # for anything the server does in the background: a slow, busy 2-core runner

Index = dict[str, dict]  # model name -> its entry in GET /v1/models (unloading entries left out)


# -- the repository and the server ----------------------------------------------------------------

# What the server runs with besides its repository and default model: HTTP only.
SERVER_SETTINGS = {
    "grpc_port": 0,
    "log_level": "info",  # the reload and drain lines are asserted
    "max_batch_size": 2,
    "intra_op_threads": 1,
    "decode_threads": 2,
    # Loads share the two CPUs with the load; a request must not time out while one runs.
    "request_timeout_ms": 60000,
}


def publish(repo: Path, name: str, source: Path | bytes) -> None:
    """Put model ``name`` in place as docs/model-repository.md says: write a hidden file, then
    rename it into place. It is backdated past SETTLE_S, as a file copied a while ago would be,
    so that the next reload takes it rather than waiting for it to settle."""
    tmp = repo / f".{name}.onnx.tmp"
    if isinstance(source, Path):
        shutil.copyfile(source, tmp)
    else:
        tmp.write_bytes(source)
    past = time.time() - 10 * SETTLE_S
    os.utime(tmp, (past, past))
    os.replace(tmp, repo / f"{name}.onnx")


def reload_until(
    server: LiveServer, condition: Callable[[Index], object], what: str, *, hup: bool = True
) -> Index:
    """SIGHUP (unless ``hup`` is false), then poll GET /v1/models until ``condition(index)``."""
    if hup:
        server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + TIMEOUT_S
    index: Index = {}
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"the server exited ({server.proc.returncode}):\n{server.log()}")
        resp = httpx.get(f"{server.base}/v1/models", timeout=10)
        assert resp.status_code == 200, resp.text
        index = {m["name"]: m for m in resp.json()["models"] if m["state"] != "unloading"}
        if condition(index):
            return index
        time.sleep(0.05)
    pytest.fail(f"{what}: not seen within {TIMEOUT_S:.0f} s; index {index}\n{server.log()}")


def all_ready(index: Index, *names: str) -> bool:
    return all(index.get(n, {}).get("state") == "ready" for n in names)


def wait_until_unloaded(server: LiveServer, name: str) -> None:
    """Until the old version of ``name`` has been unloaded; it must have drained (every request
    holding it finished) rather than timed out."""
    line = f"model {name}: old version unloaded ("
    deadline = time.monotonic() + TIMEOUT_S
    while line not in (log := server.log()):
        if time.monotonic() > deadline:
            pytest.fail(f"{line!r} not logged within {TIMEOUT_S:.0f} s:\n{log}")
        time.sleep(0.05)
    assert f"{line}drained)" in log, log


def classify(server: LiveServer, name: str, image: bytes) -> httpx.Response:
    return httpx.post(
        f"{server.base}/v1/models/{name}/classify",
        params={"top_k": 1},
        files={"file": ("hopper.jpg", image, "image/jpeg")},
        timeout=60,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the load -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    client: int
    sent: float  # time.monotonic() before the request was sent
    answered: float  # ... and once its answer was read
    status: int  # 0: no HTTP answer (the text says why)
    text: str
    label: str | None = None  # top-1 label of a 200
    index: int | None = None


@dataclass
class Load:
    """``clients`` threads, each POSTing one image to ``url`` again and again until stopped.

    A client that dies of an exception (an answer it cannot read, a bug here) fails the test:
    ``stop()`` and ``wait_for()`` raise it, rather than leaving a warning and fewer answers."""

    url: str
    image: bytes
    clients: int
    answers: list[Answer] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for i in range(self.clients):
            thread = threading.Thread(target=self._client, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._join()  # the test's own exception, if any, is the one to see: stop() raises

    def stop(self) -> list[Answer]:
        self._join()
        self._raise_errors()
        hung = [t.name for t in self._threads if t.is_alive()]
        assert not hung, f"load clients still running after the stop: {hung}"
        return self.answers

    def wait_for(self, condition: Callable[[list[Answer]], object], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not condition(list(self.answers)):
            self._raise_errors()
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not within {TIMEOUT_S:.0f} s ({len(self.answers)} answers)")
            time.sleep(0.05)

    def _join(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=70)

    def _raise_errors(self) -> None:
        if self.errors:
            raise AssertionError(
                f"{len(self.errors)} load client(s) failed: {self.errors!r}"
            ) from self.errors[0]

    def _client(self, client: int) -> None:
        try:
            self._post_until_stopped(client)
        except BaseException as exc:  # handed to the test by stop() and wait_for()
            self.errors.append(exc)

    def _post_until_stopped(self, client: int) -> None:
        files = {"file": ("hopper.jpg", self.image, "image/jpeg")}
        with httpx.Client(timeout=60) as http:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    resp = http.post(self.url, params={"top_k": 1}, files=files)
                except httpx.HTTPError as exc:
                    self.answers.append(Answer(client, sent, time.monotonic(), 0, repr(exc)))
                    continue
                answer = Answer(client, sent, time.monotonic(), resp.status_code, resp.text)
                if resp.status_code == 200:
                    top = resp.json()["results"][0]["predictions"][0]
                    answer = replace(answer, label=top["label"], index=top["index"])
                self.answers.append(answer)


def by_client(answers: list[Answer]) -> dict[int, list[Answer]]:
    """Each client's answers in the order it got them (one request at a time per client)."""
    out: dict[int, list[Answer]] = {}
    for a in sorted(answers, key=lambda a: a.sent):
        out.setdefault(a.client, []).append(a)
    return out


# -- the tests ------------------------------------------------------------------------------------


def test_repository_changes_under_load_keep_every_request_answered(
    tmp_path, tiny_export, tiny_other_head, images_dir
):
    old_model, new_model = tiny_export.model_path, tiny_other_head.model_path
    old_labels = set(tiny_export.manifest.labels)
    assert not any(NEW_HEAD.fullmatch(label) for label in old_labels)
    image = (images_dir / "hopper.jpg").read_bytes()
    repo = tmp_path / "repository"
    repo.mkdir()
    publish(repo, "under_load", old_model)
    publish(repo, "to_remove", old_model)
    server = start_server(
        tmp_path, model_repository=repo, default_model="under_load", **SERVER_SETTINGS
    )
    try:
        # Ready means the default model is warm; the others may still be warming up.
        reload_until(
            server, lambda ix: all_ready(ix, "under_load", "to_remove"), "all warm", hup=False
        )
        load = Load(f"{server.base}/v1/models/under_load/classify", image, clients=3)
        doomed = Load(f"{server.base}/v1/models/to_remove/classify", image, clients=1)
        with load, doomed:
            load.wait_for(lambda a: len(a) >= 5, "the load's first answers")

            # 1. A model added: loaded, warmed, then served. A hidden file is still being staged.
            shutil.copyfile(old_model, repo / ".staged.onnx")
            publish(repo, "added", old_model)
            index = reload_until(server, lambda ix: all_ready(ix, "added"), "added ready")
            assert not {".staged", "staged"} & set(index), index
            resp = classify(server, "added", image)
            assert resp.status_code == 200, resp.text
            assert resp.json()["model"] == "added"

            # 2. A broken file: refused with the load error; the others are left alone.
            publish(repo, "broken", b"\x08\x07 not an ONNX model \xff" * 64)
            index = reload_until(
                server, lambda ix: ix.get("broken", {}).get("state") == "failed", "broken failed"
            )
            assert index["broken"]["reason"], index["broken"]
            assert "protobuf" in index["broken"]["reason"].lower(), index["broken"]  # ORT's own
            assert all_ready(index, "under_load", "to_remove", "added"), index
            resp = classify(server, "broken", image)
            assert resp.status_code == 503 and "failed to load" in resp.text, resp.text

            # 3. The model under load replaced by one with another head: swapped once warm.
            new_digest = sha256(new_model)
            replaced_at = time.monotonic()
            publish(repo, "under_load", new_model)
            reload_until(
                server,
                lambda ix: ix["under_load"]["digest"] == new_digest,
                "under_load swapped",
            )
            swapped_at = time.monotonic()  # the name already pointed at the new model
            card = httpx.get(f"{server.base}/v1/models/under_load", timeout=10).json()
            assert card["num_classes"] == 7 and card["digest"] == new_digest, card
            load.wait_for(
                lambda a: sum(x.sent > swapped_at for x in a) >= 10, "answers after the swap"
            )
            wait_until_unloaded(server, "under_load")

            # 4. A model removed: 404 at once, while what it held finishes.
            os.remove(repo / "to_remove.onnx")
            reload_until(server, lambda ix: "to_remove" not in ix, "to_remove gone")
            resp = classify(server, "to_remove", image)
            assert resp.status_code == 404, resp.text
            assert resp.json()["error"]["code"] == "not_found", resp.text
            for path in ("/v1/models/to_remove", "/v2/models/to_remove/ready"):
                resp = httpx.get(f"{server.base}{path}", timeout=10)
                assert resp.status_code == 404, (path, resp.text)
            doomed.wait_for(lambda a: any(x.status == 404 for x in a), "a 404 to the load")
            doomed.stop()
            wait_until_unloaded(server, "to_remove")
            so_far = len(load.answers)
            load.wait_for(lambda a: len(a) >= so_far + 3, "the load going on")
            index = reload_until(server, lambda ix: True, "the index", hup=False)
            assert all_ready(index, "under_load", "added"), index
            assert index["broken"]["state"] == "failed", index

        answers = load.stop()
        doomed_answers = doomed.stop()

        # 5. SIGTERM: everything drains and the process exits 0.
        server.proc.send_signal(signal.SIGTERM)
        rc = server.proc.wait(timeout=60)
        log = server.log()
        assert rc == 0, log
        assert "drained (all requests finished)" in log, log
    finally:
        server.stop()

    # Every request to the model under load was answered 200, through all of it.
    failed = [a for a in answers if a.status != 200]
    assert not failed, failed[:10]

    # Each answer is the old head's or the new one's.
    def head(a: Answer) -> str | None:
        if a.label in old_labels:
            return "old"
        if NEW_HEAD.fullmatch(a.label or "") and a.index is not None and a.index < 7:
            return "new"
        return None

    assert all(head(a) for a in answers), [a for a in answers if not head(a)][:5]
    # Before the new file existed: only the old head (and there were such answers).
    before = [head(a) for a in answers if a.answered < replaced_at]
    assert before and set(before) == {"old"}, before
    # Sent after the index showed the swap: only the new head (and there were such answers).
    after = [head(a) for a in answers if a.sent > swapped_at]
    assert len(after) >= 10 and set(after) == {"new"}, after
    # One switch-over per client, never back: once a client got the new head, it kept it.
    for client, seq in by_client(answers).items():
        heads = [head(a) for a in seq]
        assert heads == sorted(heads, reverse=True), (client, heads)  # "old"... then "new"...

    # The removed model answered 200 until it was removed, then only 404 (never a 5xx).
    assert {a.status for a in doomed_answers} <= {200, 404}, doomed_answers[:10]
    statuses = [a.status for a in sorted(doomed_answers, key=lambda a: a.sent)]
    assert statuses[0] == 200 and statuses[-1] == 404, statuses
    assert statuses == sorted(statuses), statuses  # no 200 after the first 404


def test_models_copied_in_place_are_served_once_complete(
    tmp_path, tiny_export, tiny_other_head, images_dir
):
    """Files copied straight into place (not renamed) are seen half-written: a new one is
    refused, a served one keeps serving its old version, nothing is fatal; once the copies are
    complete, the next reload serves them."""
    old_model, new_model = tiny_export.model_path, tiny_other_head.model_path
    image = (images_dir / "hopper.jpg").read_bytes()
    repo = tmp_path / "repository"
    repo.mkdir()
    publish(repo, "base", old_model)
    server = start_server(tmp_path, model_repository=repo, default_model="base", **SERVER_SETTINGS)
    try:
        new_data, old_data = new_model.read_bytes(), old_model.read_bytes()
        # As `cp` does: truncate or create, then write; each copy stops halfway for a while.
        with open(repo / "base.onnx", "wb") as base, open(repo / "late.onnx", "wb") as late:
            base.write(new_data[: len(new_data) // 2])
            late.write(old_data[: len(old_data) // 2])
            base.flush()
            late.flush()
            # Once the halves have settled the server loads them, and refuses both.
            index = reload_until(
                server,
                lambda ix: ix.get("late", {}).get("state") == "failed" and ix["base"]["reason"],
                "half-written files refused",
            )
            assert "protobuf" in index["late"]["reason"].lower(), index
            assert index["base"]["state"] == "ready", index  # the old version serves on
            resp = classify(server, "base", image)
            assert resp.status_code == 200, resp.text
            assert not NEW_HEAD.fullmatch(resp.json()["results"][0]["predictions"][0]["label"])
            base.write(new_data[len(new_data) // 2 :])
            late.write(old_data[len(old_data) // 2 :])
        # Complete now, and changed since they were refused: the next reload loads them.
        new_digest = sha256(new_model)
        reload_until(
            server,
            lambda ix: all_ready(ix, "late") and ix["base"]["digest"] == new_digest,
            "complete files served",
        )
        resp = classify(server, "late", image)
        assert resp.status_code == 200 and resp.json()["model"] == "late", resp.text
        resp = classify(server, "base", image)
        assert resp.status_code == 200, resp.text
        assert NEW_HEAD.fullmatch(resp.json()["results"][0]["predictions"][0]["label"])
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0, server.log()
    finally:
        server.stop()
