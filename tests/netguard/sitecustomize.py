"""Loaded by every Python process the tests start (this folder is on their PYTHONPATH): a child process
(the CLI, torchrun workers, notebook kernels) that opens a non-loopback connection fails, as the
in-process ``no_network`` fixture of ``tests/conftest.py`` makes a test fail."""
import socket

_LOCAL = ("127.0.0.1", "::1", "localhost")
_connect = socket.socket.connect


def _guarded(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL:
        raise ConnectionRefusedError(f"tests must not open network connections (tried {address!r})")
    return _connect(self, address)


socket.socket.connect = _guarded
