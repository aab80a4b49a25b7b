"""List the productions of an IACT data store, with figures read from its index tables.

Usage:
  fitsync datasets STORE [--json] [--allow-root=DIR]... [--accept-new-host-key] [--timeout=SECONDS] [--ca-bundle=FILE] [--allow-password-in-url]
                         [--dropbox-config=FILE]
  fitsync datasets --help

Options:
  --allow-password-in-url  Accept https://user:password@host/ (every local user can read it).
  --json                 Print the productions as JSON.
  --allow-root=DIR       Also accept index paths (FILE_DIR) inside DIR, outside the store.
  --accept-new-host-key  Trust and record an SSH host key seen for the first time.
  --timeout=SECONDS      An SSH connection silent for SECONDS is lost (default 60; 0: never).
  --ca-bundle=FILE       CA certificates for HTTPS.
  --dropbox-config=FILE  Dropbox INI config ([dropbox] shared_url, password, access_token).

STORE holds a ctools master.json naming each production's hdu-index and
obs-index (or just hdu-index.fits.gz and obs-index.fits.gz). Observations,
events, livetime and disk size come from the index tables and the files they
list; where master.json states other totals, both are shown.
"""

from __future__ import annotations

from fitsync.cli.options import print_json, remote_options, selection
from fitsync.datastore_summary import format_summary
from fitsync.errors import EXIT_DIFFERENCES, EXIT_OK


def run(opts: dict) -> int:
    from fitsync import __version__, api

    chosen = selection(opts)
    summaries = api.datasets(opts["STORE"], allow_root=chosen.allow_root if chosen else (),
                             remote_options=remote_options(opts))
    if opts["--json"]:
        print_json({"version": __version__, "productions": [s.to_dict() for s in summaries]})
    else:
        print("\n\n".join(format_summary(s) for s in summaries))
    # Files the index lists but the store lacks are a finding, as in audit.
    return EXIT_DIFFERENCES if any(s.missing_files for s in summaries) else EXIT_OK
