"""Backup domain logic: filters (includes/excludes, resource names, label selectors), the collector
that decides which objects a Backup contains, and the streaming Ark 0.9 tarball writer."""
