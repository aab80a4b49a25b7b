"""--checksum and --manifest: which same-size, same-mtime pairs differ in content."""

from __future__ import annotations


def compare_contents(mirror, pairs: list) -> tuple[dict, dict]:
    """With --checksum or --manifest: (differs, reasons) by path for ``pairs``,
    the (source, destination) entries of equal size. A --manifest gives the
    source's digests where it records them, so only the destination is read."""
    differs: dict[str, bool] = {}
    reasons: dict[str, str] = {}
    manifest = mirror.options.manifest
    expected = {s.path: manifest.entries[s.path].blake3 for s, _ in pairs
                if manifest is not None and s.path in manifest.entries}
    from fitsync.scan import common_algorithm, digest_entries

    algo = common_algorithm(mirror.src, mirror.dst)
    total = sum(s.size for s, _ in pairs) * (1 if manifest is not None and algo == "blake3" else 2)
    mirror.reporter.phase("scan", total)
    if manifest is not None and algo == "blake3":
        src_digests = {s.path: expected[s.path] for s, _ in pairs if s.path in expected}
        missing = [s for s, _ in pairs if s.path not in expected]
    else:
        src_digests, missing = {}, [s for s, _ in pairs]
    advance = lambda e: mirror.reporter.advance(e.size)  # noqa: E731
    # Both sides at once: each is mostly one thread's work for small files.
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(max_workers=2) as pool:
        dst_side = pool.submit(digest_entries, mirror.dst, [d for _, d in pairs], algo=algo,
                               jobs=mirror.options.jobs, on_done=advance)
        src_side = pool.submit(digest_entries, mirror.src, missing, algo=algo, jobs=mirror.options.jobs,
                               on_done=advance)
        dst_digests, dst_errors = dst_side.result()
        computed, src_errors = src_side.result()
    src_digests.update(computed)
    for path, error in {**src_errors, **dst_errors}.items():
        differs[path] = True
        reasons[path] = f"could not compare ({error})"
    for s, _ in pairs:
        if s.path in differs:
            continue
        a, b = src_digests.get(s.path), dst_digests.get(s.path)
        differs[s.path] = a != b
        if manifest is not None and s.path in expected and b != expected[s.path]:
            reasons[s.path] = "does not match the manifest"
        else:
            reasons[s.path] = "content differs"
    mirror.reporter.close_phase()
    return differs, reasons
