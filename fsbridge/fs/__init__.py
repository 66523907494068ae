"""The FUSE side of fsbridge (Linux, in the VM): a cached passthrough of the host shares.

Layers, from the kernel down: operations.py (pyfuse3 adapter) -> tree.py (the core: what the bridged
tree looks like) -> inodes.py (inode table) + cache.py (metadata cache) -> backing.py (every syscall on
the share, in threads). mount.py owns the lifecycle. Importing this package imports no pyfuse3; only
operations.py and mount.serve_forever do.
"""
