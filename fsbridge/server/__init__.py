"""`fsbridge serve` (in the VM): an HTTP API on trio + h11 that loads image archives by path reference
or by upload, into the embedded store or the VM's podman.

Modules: http (h11 connection handling, streamed bodies), app (routes, auth, error mapping), resolve
(path reference → open file inside an export), backends (builtin store, podman), listen (unix/TCP
listeners, tokens, run loop).
"""
