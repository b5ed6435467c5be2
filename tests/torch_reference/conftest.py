# The reference networks are imported by tests/test_torch_import.py (which
# skips without torch); collected on their own, as doctest modules, they
# would fail where torch is not installed.
collect_ignore_glob = ["*.py"]
