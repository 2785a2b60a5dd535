"""Tests of agent.py: each starts the real agent as a subprocess and speaks frames to it.

    python3 -m unittest discover -s runtimes/python -p 'test_*.py'

With NEWT_AGENT_IMAGE=<image> the same tests run the agent inside that image instead
(`docker run --rm -i --network none --read-only`, the function's folder mounted
read-only at /app), which checks a freshly built base image end to end.
"""

import base64
import io
import json
import os
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
import unittest
import zipfile

AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "agent.py")
IMAGE = os.environ.get("NEWT_AGENT_IMAGE")
#: Seconds to wait for one reply before failing instead of hanging.
REPLY_TIMEOUT = 20


class Agent:
    """One running agent with the function source `main_py` in its workdir."""

    def __init__(self, main_py, files=None, env=None):
        self.dir = tempfile.mkdtemp(prefix="newt-agent-test-")
        os.chmod(self.dir, 0o755)
        for name, text in {"main.py": main_py, **(files or {})}.items():
            with open(os.path.join(self.dir, name), "w") as file:
                file.write(textwrap.dedent(text))
            os.chmod(os.path.join(self.dir, name), 0o644)
        if IMAGE:
            self.workdir = "/app"
            self.scratch = "/tmp/function"  # on the container's tmpfs
            command = ["docker", "run", "--rm", "-i", "--network", "none", "--read-only",
                       "--tmpfs", "/tmp", "-v", f"{self.dir}:/app:ro"]
            for name, value in (env or {}).items():
                command += ["-e", f"{name}={value}"]
            command += [IMAGE, "python3", "/opt/newt/agent.py"]
        else:
            self.workdir = self.dir
            self.scratch = os.path.join(self.dir, "function")
            command = [sys.executable, AGENT]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ)

    def send_bytes(self, data):
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def send(self, message):
        body = json.dumps(message).encode()
        self.send_bytes(struct.pack(">I", len(body)) + body)

    def _read_exact(self, size):
        data = b""
        deadline = time.monotonic() + REPLY_TIMEOUT
        while len(data) < size:
            if not self.selector.select(max(0, deadline - time.monotonic())):
                raise AssertionError(f"no reply within {REPLY_TIMEOUT} s")
            chunk = os.read(self.process.stdout.fileno(), size - len(data))
            if not chunk:
                raise AssertionError(f"agent closed stdout; stderr: {self.stderr()}")
            data += chunk
        return data

    def receive(self):
        (length,) = struct.unpack(">I", self._read_exact(4))
        self.last_frame_bytes = length
        return json.loads(self._read_exact(length).decode("utf-8"))

    def request(self, message):
        self.send(message)
        return self.receive()

    def init(self, **fields):
        return self.request({"type": "init", "function": "test", "handler": "main:handler",
                             "workdir": self.workdir, **fields})

    def run(self, input_text, call_id="call-1", deadline_ms=None):
        return self.request({"type": "run", "id": call_id, "input": input_text,
                             "deadline_ms": deadline_ms})

    def finish(self):
        """Closes stdin and returns the exit status."""
        self.process.stdin.close()
        return self.process.wait(timeout=REPLY_TIMEOUT)

    def stderr(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        return self.process.stderr.read().decode("utf-8", errors="replace")

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            stream.close()
        self.selector.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class AgentTest(unittest.TestCase):
    def start(self, main_py, files=None, env=None):
        agent = Agent(main_py, files, env)
        self.addCleanup(agent.close)
        return agent

    def ready(self, main_py, **init_fields):
        agent = self.start(main_py)
        reply = agent.init(**init_fields)
        self.assertEqual(reply["type"], "ready", reply)
        return agent

    def test_init_then_run_with_event(self):
        agent = self.ready("""
            def handler(event):
                return {"got": event, "sum": sum(event["numbers"])}
        """)
        reply = agent.run('{"numbers": [1, 2, 3]}', call_id="c-42")
        self.assertEqual(reply["type"], "result")
        self.assertEqual(reply["id"], "c-42")
        self.assertTrue(reply["ok"], reply)
        self.assertEqual(json.loads(reply["output"]), {"got": {"numbers": [1, 2, 3]}, "sum": 6})
        self.assertEqual(reply["logs"], "")
        # The agent stays up for the next call, and output is compact JSON.
        self.assertEqual(agent.run('{"numbers": [5]}')["output"], '{"got":{"numbers":[5]},"sum":5}')
        self.assertEqual(agent.finish(), 0)

    def test_empty_input_is_none(self):
        agent = self.ready("def handler(event):\n    return event is None\n")
        self.assertEqual(agent.run("")["output"], "true")
        self.assertEqual(agent.run("  \n")["output"], "true")

    def test_run_with_context(self):
        agent = self.ready("""
            import os
            def handler(event, context):
                return {"function": context.function_name, "call": context.call_id,
                        "deadline": context.deadline_ms, "remaining": context.remaining_ms(),
                        "env": [os.environ["NEWT_FUNCTION"], os.environ["NEWT_CALL_ID"]]}
        """)
        deadline = int(time.time() * 1000) + 60_000
        output = json.loads(agent.run("{}", call_id="c-7", deadline_ms=deadline)["output"])
        self.assertEqual(output["function"], "test")
        self.assertEqual(output["call"], "c-7")
        self.assertEqual(output["deadline"], deadline)
        self.assertTrue(50_000 < output["remaining"] <= 60_000, output)
        self.assertEqual(output["env"], ["test", "c-7"])
        output = json.loads(agent.run("{}", call_id="c-8")["output"])
        self.assertIsNone(output["deadline"])
        self.assertIsNone(output["remaining"])

    def test_exception_gives_traceback_and_agent_survives(self):
        agent = self.ready("""
            def handler(event):
                print("before the failure")
                raise ValueError("invalid roll 'x'")
        """)
        reply = agent.run("{}")
        self.assertFalse(reply["ok"])
        self.assertIn("Traceback", reply["error"])
        self.assertIn("ValueError: invalid roll 'x'", reply["error"])
        self.assertIn("main.py", reply["error"])
        self.assertNotIn("agent.py", reply["error"])
        self.assertEqual(reply["logs"], "before the failure\n")
        self.assertFalse(agent.run("{}")["ok"])

    def test_sys_exit_fails_the_call_not_the_agent(self):
        agent = self.ready("import sys\ndef handler(event):\n    sys.exit(3)\n")
        reply = agent.run("{}")
        self.assertFalse(reply["ok"])
        self.assertIn("SystemExit: 3", reply["error"])
        self.assertEqual(agent.request({"type": "ping"}), {"type": "pong"})

    def test_prints_are_logs_not_frames(self):
        agent = self.ready("""
            import sys
            print("imported")
            def handler(event):
                print("to stdout")
                print("to stderr", file=sys.stderr)
                sys.stdout.write("no newline")
                print(" then more")
                return "done"
        """)
        reply = agent.run("{}")
        self.assertEqual(reply["output"], '"done"')
        self.assertEqual(reply["logs"], "to stdout\nto stderr\nno newline then more\n")

    def test_import_output_goes_to_init_logs(self):
        agent = self.start("print('loading model')\ndef handler(event):\n    return 1\n")
        self.assertEqual(agent.init(), {"type": "ready", "logs": "loading model\n"})
        self.assertEqual(agent.run("{}")["logs"], "")

    def test_raw_fd_writes_do_not_corrupt_frames(self):
        agent = self.ready("""
            import os, subprocess, sys
            os.write(1, b"garbage on fd 1")
            def handler(event):
                os.write(1, b"more garbage")
                subprocess.run([sys.executable, "-c", "print('child output')"], check=True)
                return os.read(0, 10).decode()  # fd 0 is /dev/null, not the frames
        """)
        reply = agent.run("[1]")
        self.assertEqual(reply["output"], '""', reply)
        self.assertEqual(agent.run("[2]")["id"], "call-1")
        self.assertEqual(agent.finish(), 0)
        stderr = agent.stderr()
        for text in ("garbage on fd 1", "more garbage", "child output"):
            self.assertIn(text, stderr)

    def test_logging_configured_at_import_is_captured(self):
        agent = self.ready("""
            import logging
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
            def handler(event):
                logging.info("rolling %s", event)
                return None
        """)
        reply = agent.run('"4d6"')
        self.assertEqual(reply["output"], "null")
        self.assertEqual(reply["logs"], "INFO rolling 4d6\n")

    def test_invalid_json_input(self):
        agent = self.ready("def handler(event):\n    return event\n")
        reply = agent.run("{not json", call_id="bad")
        self.assertEqual(reply["id"], "bad")
        self.assertFalse(reply["ok"])
        self.assertTrue(reply["error"].startswith("input is not valid JSON: "), reply["error"])

    def test_input_that_is_not_utf8_arrives_unaltered_and_is_refused(self):
        agent = self.ready("def handler(event):\n    return event\n")
        raw = base64.b64encode(b'"\xff\xfe"').decode()
        reply = agent.request({"type": "run", "id": "b", "input": "", "input_b64": raw})
        self.assertFalse(reply["ok"])
        self.assertTrue(reply["error"].startswith("input is not valid JSON: "), reply["error"])
        # Valid JSON in base64 is the same call as in text.
        ok = agent.request({"type": "run", "id": "c", "input": "",
                            "input_b64": base64.b64encode('{"a": "é"}'.encode()).decode()})
        self.assertEqual(json.loads(ok["output"]), {"a": "é"})

    def test_non_serialisable_return(self):
        agent = self.ready("def handler(event):\n    return {1, 2}\n")
        reply = agent.run("{}")
        self.assertFalse(reply["ok"])
        self.assertIn("(set) is not JSON-serialisable", reply["error"])
        agent = self.ready("def handler(event):\n    return float('nan')\n")
        self.assertIn("(float) is not JSON-serialisable", agent.run("{}")["error"])

    def test_import_error_at_init(self):
        agent = self.start("import sys\nprint('partial')\nimport no_such_module_here\n")
        reply = agent.init()
        self.assertEqual(reply["type"], "error")
        self.assertIn("ModuleNotFoundError", reply["error"])
        self.assertIn("no_such_module_here", reply["error"])
        self.assertEqual(reply["logs"], "partial\n")
        # The host discards such an instance; calls before a good init are refused.
        self.assertFalse(agent.run("{}")["ok"])
        self.assertEqual(agent.finish(), 0)

    def test_bad_handlers_at_init(self):
        cases = {
            "main:missing": "AttributeError",
            "main:value": "not callable",
            "main:no_arguments": "must take (event) or (event, context)",
            "nocolon": "not of the form module:function",
        }
        for spec, expected in cases.items():
            with self.subTest(spec=spec):
                agent = self.start("value = 3\ndef no_arguments():\n    pass\n")
                reply = agent.init(handler=spec)
                self.assertEqual(reply["type"], "error")
                self.assertIn(expected, reply["error"])

    def test_other_module_and_callable_object(self):
        agent = self.start("", files={"app.py": """
            class Handler:
                def __call__(self, event, context):
                    return [event, context.call_id]
            handle = Handler()
        """})
        self.assertEqual(agent.init(handler="app:handle")["type"], "ready")
        self.assertEqual(agent.run("5", call_id="x")["output"], '[5,"x"]')

    def test_bundle_is_unpacked_into_the_workdir(self):
        files = {"main.py": "from lib.util import twice\ndef handler(event):\n    return twice(event)\n",
                 "lib/__init__.py": "", "lib/util.py": "def twice(x):\n    return 2 * x\n"}
        tar_gz = io.BytesIO()
        with tarfile.open(fileobj=tar_gz, mode="w:gz") as archive:
            for name, text in files.items():
                entry = tarfile.TarInfo(name)
                entry.size = len(text.encode())
                archive.addfile(entry, io.BytesIO(text.encode()))
        zipped = io.BytesIO()
        with zipfile.ZipFile(zipped, "w") as archive:
            for name, text in files.items():
                archive.writestr(name, text)
        for kind, data in {"tar.gz": tar_gz.getvalue(), "zip": zipped.getvalue()}.items():
            with self.subTest(kind):
                agent = self.start("raise RuntimeError('not this main.py')\n")
                bundle = base64.b64encode(data).decode()
                reply = agent.init(workdir=agent.scratch, bundle=bundle)
                self.assertEqual(reply["type"], "ready", reply)
                self.assertEqual(agent.run("21")["output"], "42")

    def test_bundle_escaping_the_workdir_is_refused(self):
        for name, entry in {"parent": tarfile.TarInfo("../evil.py"),
                            "absolute": tarfile.TarInfo("/tmp/evil.py"),
                            "symlink": tarfile.TarInfo("main.py")}.items():
            with self.subTest(name):
                if name == "symlink":
                    entry.type, entry.linkname = tarfile.SYMTYPE, "/etc/passwd"
                data = io.BytesIO()
                with tarfile.open(fileobj=data, mode="w:gz") as archive:
                    archive.addfile(entry, io.BytesIO(b""))
                agent = self.start("def handler(event):\n    return 1\n")
                reply = agent.init(workdir=agent.scratch, bundle=base64.b64encode(data.getvalue()).decode())
                self.assertEqual(reply["type"], "error")
                self.assertIn("bundle entry", reply["error"])

    def test_installed_requirements_in_deps_come_first_on_sys_path(self):
        # The image build installs requirements with `pip3 install --target .deps`.
        # `colorsys` shadows the standard library's module: the function's pinned
        # versions win over what the image carries; a .pth file's folder is on the path
        # too.
        agent = self.start("""
            import sys, colorsys, depmod, vendored_mod
            def handler(event):
                return {"path": sys.path[:3], "shadow": colorsys.MARK, "dep": depmod.VALUE,
                        "pth": vendored_mod.VALUE}
        """)
        deps = os.path.join(agent.dir, ".deps")
        os.makedirs(os.path.join(deps, "vendored"))
        for name, text in {"depmod.py": "VALUE = 'from .deps'\n",
                           "colorsys.py": "MARK = 'shadowed'\n",
                           "extra.pth": "vendored\n",
                           "vendored/vendored_mod.py": "VALUE = 'from a .pth'\n"}.items():
            with open(os.path.join(deps, name), "w") as file:
                file.write(text)
        for root, folders, files in os.walk(deps):
            os.chmod(root, 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        reply = agent.init()
        self.assertEqual(reply["type"], "ready", reply)
        output = json.loads(agent.run("")["output"])
        workdir = agent.workdir
        self.assertEqual(output["path"], [workdir, os.path.join(workdir, ".deps"),
                                          os.path.join(workdir, ".deps", "vendored")])
        self.assertEqual(output["shadow"], "shadowed")
        self.assertEqual(output["dep"], "from .deps")
        self.assertEqual(output["pth"], "from a .pth")

    def test_without_deps_folder_the_path_is_unchanged(self):
        agent = self.ready("import sys\ndef handler(event):\n    return sys.path[:2]\n")
        path = json.loads(agent.run("")["output"])
        self.assertEqual(path[0], agent.workdir)
        self.assertNotIn(".deps", path[1])

    def test_runtime_level_instance_imports_unpacking_before_init(self):
        # What a runtime-level instance needs for `init` is loaded while it waits, not during the claim.
        main_py = ("import sys\n"
                   "def handler(event):\n"
                   "    return 'tarfile' in sys.modules\n")
        for env, expected in (({"NEWT_RUNTIME_LEVEL": "1"}, True), ({}, False)):
            with self.subTest(env=env):
                agent = self.start(main_py, env=env)
                self.assertEqual(agent.init()["type"], "ready")
                self.assertEqual(json.loads(agent.run("")["output"]), expected)

    def test_ping_pong(self):
        agent = self.start("def handler(event):\n    return 1\n")
        self.assertEqual(agent.request({"type": "ping"}), {"type": "pong"})
        self.assertEqual(agent.init()["type"], "ready")
        self.assertEqual(agent.request({"type": "ping"}), {"type": "pong"})

    def test_log_truncation_keeps_the_head(self):
        agent = self.ready("""
            def handler(event):
                print("é" * 40)   # 80 bytes of UTF-8, cut inside a character
                print("tail")
                return 1
        """, max_log_bytes=25)
        reply = agent.run("{}")
        self.assertTrue(reply["ok"])
        self.assertEqual(reply["logs"], "é" * 12 + "\n[logs truncated]")

    def test_env_is_set_before_import(self):
        agent = self.ready("""
            import os
            AT_IMPORT = os.environ.get("GREETING")
            def handler(event):
                return [AT_IMPORT, os.environ["SECRET"], os.getcwd()]
        """, env={"GREETING": "hello", "SECRET": "s3"})
        self.assertEqual(json.loads(agent.run("{}")["output"]), ["hello", "s3", agent.workdir])

    def test_unicode_round_trip(self):
        agent = self.ready("def handler(event):\n    print(event)\n    return event + ' ✓'\n")
        reply = agent.run('"héllo 🎲"')
        self.assertEqual(json.loads(reply["output"]), "héllo 🎲 ✓")
        self.assertEqual(reply["logs"], "héllo 🎲\n")

    def test_output_over_max_output_bytes_is_refused_by_the_agent(self):
        agent = self.ready("def handler(event):\n    print('made', event)\n    return 'x' * event\n",
                           max_output_bytes=100)
        self.assertEqual(agent.run("98")["output"], '"' + "x" * 98 + '"')  # 100 bytes: fits
        reply = agent.run("99", call_id="big")
        self.assertEqual(reply["id"], "big")
        self.assertFalse(reply["ok"])
        self.assertNotIn("output", reply)
        self.assertEqual(reply["error"], "output exceeds the limit of 100 bytes: the return value is 101 bytes of JSON")
        self.assertEqual(reply["logs"], "made 99\n")
        # Bytes, not characters: "é" is two bytes of UTF-8.
        agent = self.ready("def handler(event):\n    return 'é' * event\n", max_output_bytes=10)
        self.assertTrue(agent.run("4")["ok"])
        self.assertIn("over", agent.run("5")["error"].replace("exceeds", "over"))
        # The agent goes on serving.
        self.assertEqual(agent.run("1")["output"], '"é"')

    def test_replies_are_cut_to_fit_the_frame_limit(self):
        # Control characters escape to six bytes each (\u0000): logs within
        # max_log_bytes can still make a reply over the host's frame limit.
        agent = self.ready("""
            import sys
            def handler(event):
                sys.stdout.write("\\x00" * 10_000)
                if event == "fail":
                    raise ValueError("\\x01" * 100_000)
                return "\\x02" * 500
        """, max_log_bytes=10_000, max_output_bytes=4_000, max_frame_bytes=8_192)
        reply = agent.run('"ok"')
        self.assertLessEqual(agent.last_frame_bytes, 8_192)
        self.assertTrue(reply["ok"], reply)
        self.assertEqual(json.loads(reply["output"]), "\x02" * 500)  # the output is never cut
        self.assertTrue(reply["logs"].endswith("\n[logs truncated]"), reply["logs"][-40:])
        self.assertGreater(len(reply["logs"]), 100)
        reply = agent.run('"fail"')
        self.assertLessEqual(agent.last_frame_bytes, 8_192)
        self.assertFalse(reply["ok"])
        self.assertIn("Traceback", reply["error"])
        self.assertIn("error truncated", reply["error"])
        # Without max_frame_bytes the agent uses the host's formula; a long error
        # keeps its head and its tail (where the exception is named).
        agent = self.ready("def handler(event):\n    raise KeyError('k' * 100_000 + 'THE END')\n")
        reply = agent.run("{}")
        self.assertLess(len(reply["error"].encode()), 17 * 1024)
        self.assertTrue(reply["error"].startswith("Traceback"), reply["error"][:40])
        self.assertIn("THE END", reply["error"])
        self.assertEqual(agent.request({"type": "ping"}), {"type": "pong"})

    def test_deeply_nested_input_fails_the_call_not_the_agent(self):
        agent = self.ready("def handler(event):\n    return len(event)\n")
        depth = 100_000
        for name, text in {"array": "[" * depth + "]" * depth,
                           "object": '{"a":' * depth + "1" + "}" * depth}.items():
            with self.subTest(name):
                reply = agent.run(text, call_id="deep")
                self.assertEqual(reply["id"], "deep")
                self.assertFalse(reply["ok"])
                self.assertTrue(reply["error"].startswith("input is nested too deeply"), reply["error"])
                self.assertEqual(agent.run("[1, 2]")["output"], "2")
        # The same input as base64 (the host's way for input that is not UTF-8).
        raw = base64.b64encode(("[" * depth + "]" * depth).encode()).decode()
        reply = agent.request({"type": "run", "id": "b", "input": "", "input_b64": raw})
        self.assertTrue(reply["error"].startswith("input is nested too deeply"), reply["error"])
        self.assertEqual(agent.finish(), 0)

    def test_return_value_nested_too_deeply_fails_the_call_not_the_agent(self):
        agent = self.ready("""
            def handler(event):
                value = "bottom"
                for _ in range(event):
                    value = [value]
                return value
        """)
        reply = agent.run("100000")
        self.assertFalse(reply["ok"])
        self.assertIn("(list) is nested too deeply", reply["error"])
        self.assertEqual(agent.run("2")["output"], '[["bottom"]]')
        self.assertEqual(agent.finish(), 0)

    def test_end_of_input_exits_zero(self):
        agent = self.start("def handler(event):\n    return 1\n")
        self.assertEqual(agent.finish(), 0)

    def test_malformed_frames_exit_two(self):
        cases = {
            "oversized": struct.pack(">I", 64 * 1024 * 1024 + 1),
            "not JSON": struct.pack(">I", 5) + b"hello",
            "not an object": struct.pack(">I", 2) + b"[]",
            "unknown type": struct.pack(">I", 17) + b'{"type":"launch"}',
            "truncated": struct.pack(">I", 10) + b"{}",
        }
        for name, data in cases.items():
            with self.subTest(name):
                agent = self.start("def handler(event):\n    return 1\n")
                agent.send_bytes(data)
                self.assertEqual(agent.finish(), 2)
                self.assertIn("newt agent: protocol error", agent.stderr())


class FakeProxy:
    """A stand-in for newt's egress proxy on a unix socket: it answers a plain request
    with 200 and the request line it got (403 for a target containing `denied`), and a
    CONNECT with 200 then an echo of the tunnel until the client ends its side."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="newt-egress-test-")
        self.path = os.path.join(self.dir, "egress.sock")
        self.requests = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            conn.settimeout(REPLY_TIMEOUT)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, rest = data.split(b"\r\n\r\n", 1)
            line = head.split(b"\r\n", 1)[0].decode()
            self.requests.append(line)
            if line.startswith("CONNECT "):
                conn.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n" + rest)
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    conn.sendall(chunk)
                return
            status, body = (403, "newt egress: denied") if "denied" in line else (200, "saw " + line)
            body = body.encode()
            conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (status, len(body), body))

    def close(self):
        self.listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@unittest.skipIf(IMAGE, "the proxy's socket is on this host; tests/tests/e2e/egress.rs covers the image")
class EgressTest(unittest.TestCase):
    start = AgentTest.start
    ready = AgentTest.ready

    def proxy(self):
        proxy = FakeProxy()
        self.addCleanup(proxy.close)
        return proxy

    def test_egress_socket_points_http_clients_at_the_forwarder(self):
        proxy = self.proxy()
        agent = self.ready("""
            import os, urllib.request
            AT_IMPORT = os.environ.get("HTTPS_PROXY")
            def handler(event):
                names = ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy"]
                with urllib.request.urlopen("http://service.test:8080/path?q=1", timeout=10) as answer:
                    body = answer.read().decode()
                return {"env": {n: os.environ.get(n) for n in names}, "at_import": AT_IMPORT, "body": body}
        """, egress_socket=proxy.path, env={"NO_PROXY": "*", "no_proxy": "*"})
        reply = agent.run("{}")
        self.assertTrue(reply["ok"], reply)
        output = json.loads(reply["output"])
        url = output["env"]["HTTP_PROXY"]
        self.assertRegex(url, r"^http://127\.0\.0\.1:\d+$")
        self.assertEqual(output["env"], {"HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url,
                                         "https_proxy": url, "NO_PROXY": None, "no_proxy": None})
        self.assertEqual(output["at_import"], url)
        # The client spoke to the proxy as to any proxy: an absolute-form request.
        self.assertEqual(output["body"], "saw GET http://service.test:8080/path?q=1 HTTP/1.1")

    def test_a_refusal_reaches_the_handler_with_its_reason(self):
        proxy = self.proxy()
        agent = self.ready("""
            import urllib.error, urllib.request
            def handler(event):
                try:
                    urllib.request.urlopen("http://denied.test/", timeout=10)
                except urllib.error.HTTPError as error:
                    return [error.code, error.read().decode()]
        """, egress_socket=proxy.path)
        self.assertEqual(json.loads(agent.run("{}")["output"]), [403, "newt egress: denied"])

    def test_tunnels_carry_bytes_both_ways_with_half_close_and_in_parallel(self):
        proxy = self.proxy()
        agent = self.ready("""
            import hashlib, os, socket, threading
            def tunnel(size, results, index):
                host, port = os.environ["HTTPS_PROXY"].rsplit("/", 1)[1].split(":")
                payload = os.urandom(size)
                with socket.create_connection((host, int(port)), timeout=10) as conn:
                    conn.sendall(b"CONNECT api.test:443 HTTP/1.1\\r\\n\\r\\n" + payload)
                    conn.shutdown(socket.SHUT_WR)
                    data = b""
                    while True:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                head, echoed = data.split(b"\\r\\n\\r\\n", 1)
                results[index] = [head.decode(), hashlib.sha256(echoed).hexdigest() == hashlib.sha256(payload).hexdigest(), len(echoed)]
            def handler(event):
                results = [None] * len(event)
                threads = [threading.Thread(target=tunnel, args=(size, results, i)) for i, size in enumerate(event)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                return results
        """, egress_socket=proxy.path)
        # One tunnel far over the forwarder's 64 KiB buffer, several at once.
        sizes = [3 * 1024 * 1024, 1, 70_000, 0, 5000, 128 * 1024, 10, 65536]
        reply = agent.run(json.dumps(sizes))
        self.assertTrue(reply["ok"], reply)
        for size, (head, same, length) in zip(sizes, json.loads(reply["output"])):
            self.assertEqual(head, "HTTP/1.1 200 Connection Established")
            self.assertTrue(same, size)
            self.assertEqual(length, size)
        self.assertEqual(proxy.requests.count("CONNECT api.test:443 HTTP/1.1"), len(sizes))
        # Every pair was closed once both sides ended: the agent holds no more fds than
        # after a run without tunnels.
        agent.run("[]")
        baseline = len(os.listdir("/proc/%d/fd" % agent.process.pid))
        agent.run(json.dumps([1000] * 20))
        deadline = time.monotonic() + 5
        while len(os.listdir("/proc/%d/fd" % agent.process.pid)) > baseline and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(len(os.listdir("/proc/%d/fd" % agent.process.pid)), baseline)

    def test_an_unreachable_proxy_answers_502_saying_so(self):
        proxy = self.proxy()
        missing = os.path.join(proxy.dir, "gone.sock")
        agent = self.ready("""
            import urllib.error, urllib.request
            def handler(event):
                try:
                    urllib.request.urlopen("http://service.test/", timeout=10)
                except urllib.error.HTTPError as error:
                    return [error.code, error.read().decode()]
        """, egress_socket=missing)
        code, body = json.loads(agent.run("{}")["output"])
        self.assertEqual(code, 502)
        self.assertIn("newt egress: the proxy at %s is unreachable" % missing, body)

    def test_without_egress_socket_nothing_is_set(self):
        agent = self.ready("""
            import os, threading
            def handler(event):
                return [os.environ.get("HTTP_PROXY"), [t.name for t in threading.enumerate()]]
        """)
        proxy_var, threads = json.loads(agent.run("{}")["output"])
        self.assertEqual(proxy_var, os.environ.get("HTTP_PROXY"))
        self.assertNotIn("newt-egress", threads)


class TakesContextTest(unittest.TestCase):
    """The code-object reading of a plain function agrees with inspect.signature."""

    def test_plain_functions_read_as_inspect_reads_them(self):
        import functools
        import importlib.util
        import inspect

        spec = importlib.util.spec_from_file_location("newt_agent_under_test", AGENT)
        agent = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(agent)

        def by_inspect(handler):
            parameters = inspect.signature(handler).parameters.values()
            positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            if any(p.kind == p.VAR_POSITIONAL for p in parameters):
                return True
            required = [p for p in positional if p.default is p.empty]
            if not positional or len(required) > 2:
                return "refused"
            return len(positional) >= 2

        def wrapped(event, context):
            return event

        @functools.wraps(wrapped)
        def decorated(*args):
            return wrapped(*args)

        class Handler:
            def method(self, event):
                return event

        cases = [
            lambda e: e, lambda e, c: e, lambda e, c=None: e, lambda e, c, x=1: e,
            lambda *a: a, lambda e, *a: e, lambda e, /, c: e, lambda e, *, k=1: e,
            lambda e, c, x: e, lambda: None, decorated, Handler().method, Handler(),
        ]
        Handler.__call__ = lambda self, event, context: event
        for handler in cases:
            with self.subTest(handler=handler):
                try:
                    got = agent.takes_context(handler)
                except TypeError as error:
                    self.assertIn("must take (event) or (event, context)", str(error))
                    got = "refused"
                self.assertEqual(got, by_inspect(handler))


if __name__ == "__main__":
    unittest.main()
