"""Processes under test: started pinned to one core, awaited until they answer (over plain HTTP or
TLS), measured from /proc (CPU time, peak memory), stopped by their own pid."""

import http.client
import os
import signal
import socket
import ssl
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def children(pid):
    """Pids of the live children of `pid` (e.g. nginx's worker)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def cpu_ticks(pid):
    """utime + stime of one process, in clock ticks (all its threads, from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def peak_rss_kib(pid):
    """VmHWM of one process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Proc:
    """A process started under `taskset -c CORE`; its output goes to `log_path`."""

    def __init__(self, name, argv, core, log_path, env=None, stop_signal=signal.SIGINT):
        self.name = name
        self.log_path = log_path
        self.stop_signal = stop_signal
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(
            ["taskset", "-c", str(core), *argv],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.pid = self.popen.pid  # taskset execs the program: same pid

    def tree(self):
        """The process and its live children."""
        return [self.pid, *children(self.pid)]

    def cpu_seconds(self):
        """CPU time (user + system) used so far by the process and its live children."""
        total = 0
        for pid in self.tree():
            try:
                total += cpu_ticks(pid)
            except OSError:
                pass
        return total / CLK_TCK

    def peak_rss_mib(self):
        """Peak resident memory (VmHWM) of the process and its live children, in MiB."""
        total = 0
        for pid in self.tree():
            try:
                total += peak_rss_kib(pid)
            except OSError:
                pass
        return total / 1024

    def alive(self):
        return self.popen.poll() is None

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout=5.0):
        """Asks the process to stop, then kills its process group if it lingers."""
        if self.alive():
            try:
                self.popen.send_signal(self.stop_signal)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()


def tls_client(alpn=None):
    """A TLS client context that accepts any certificate: the caller checks which one it got."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def tls_session(port, alpn, host="localhost", timeout=2.0):
    """One handshake offering the ALPN protocols `alpn`; returns what was negotiated and the
    server's certificate (DER)."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with tls_client(alpn).wrap_socket(raw, server_hostname=host) as s:
            return {"protocol": s.version(), "cipher": s.cipher()[0],
                    "alpn": s.selected_alpn_protocol(), "certificate": s.getpeercert(binary_form=True)}


def http_get(port, path="/", method="GET", headers=None, host="127.0.0.1", timeout=2.0, tls=None):
    """One request, over TLS when `tls` is a client context; returns (status, body bytes)."""
    if tls:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=tls)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ok(port, path, proc=None, timeout=60.0, interval=0.002, host="127.0.0.1", tls=None):
    """Polls until GET `path` answers 200; returns (seconds waited, body). Raises when `proc`
    exits or the time runs out."""
    started = time.monotonic()
    while True:
        try:
            status, body = http_get(port, path, host=host, timeout=1.0, tls=tls)
            if status == 200:
                return time.monotonic() - started, body
        except (OSError, http.client.HTTPException):
            pass
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"no 200 on :{port}{path} within {timeout:.0f}s")
        time.sleep(interval)


def port_free(port, host="127.0.0.1"):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def core_times(core):
    """(busy, steal) jiffies of one core since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
                return user + nice + system + irq + softirq, steal
    raise RuntimeError(f"no cpu{core} in /proc/stat")
