#!/usr/bin/env bash
# Mutation run (issue #17 item 7): mutate one module of a frozen copy of HEAD against the fast tests that cover it.
# Usage: scripts/mutation.sh MODULE [WORKDIR [MUTANT-NAME...]]
# (MODULE: grid | encode | db | scan | pngdecode | bits; WORKDIR defaults to /tmp/tessq-mutation; MUTANT-NAMEs, e.g. "tessq.jobs.scan.x_safe_component*", limit the run to those).
# MUTATION_REV=<commit> mutates that commit's tree instead of HEAD (the baseline before new tests).
set -euo pipefail

module=${1:?usage: scripts/mutation.sh grid|encode|db|scan|pngdecode|bits [WORKDIR]}
workdir=${2:-/tmp/tessq-mutation}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)

# The fast, in-process tests that exercise each module (SQLite only: backends are parametrised by id).
case "$module" in
  grid)   path=tessq/cut/grid.py ; tests='"tests/test_grid.py", "tests/test_grid_rules.py"' ; select='' ;;
  encode) path=tessq/cut/encode.py ; tests='"tests/test_encode.py", "tests/test_png_filters.py", "tests/test_slice_kinds.py", "tests/test_png_stream.py", "tests/test_tiff_slices.py"' ; select='' ;;
  scan)   path=tessq/jobs/scan.py ; tests='"tests/test_scan.py", "tests/test_scan_rules.py", "tests/test_scan_tree.py"' ; select='' ;;
  db)     path=tessq/jobs/db.py ; tests='"tests/test_claim.py", "tests/test_schema.py", "tests/test_history.py", "tests/test_queue.py", "tests/test_scan.py", "tests/test_scan_tree.py", "tests/test_status_table.py", "tests/test_record_candidates.py", "tests/test_upload_ledger.py"'
          select='"-k", "not postgres and not redis",' ;;
  pngdecode) path=tessq/cut/pngdecode.py ; tests='"tests/test_stream_check.py", "tests/test_verify.py"' ; select='' ;;
  bits)   path=tessq/cut/bits.py ; tests='"tests/test_fidelity.py", "tests/test_verify.py"' ; select='' ;;
  *) echo "unknown module: $module (grid | encode | db | scan | pngdecode | bits)" >&2; exit 2 ;;
esac

# A frozen copy: other branches edit these modules meanwhile, and mutmut writes mutants/ beside the sources.
copy="$workdir/$module"
rm -rf "$copy" && mkdir -p "$copy"
git -C "$repo" archive "${MUTATION_REV:-HEAD}" | tar -x -C "$copy"  # MUTATION_REV=<commit>: an earlier test suite
[ -f "$copy/$path" ] || path="tessq/$module.py"  # an older commit (MUTATION_REV) of the flat layout
present=()  # the rule-test files are new: keep only those this commit has
for t in $(echo "$tests" | tr -d '",'); do [ -f "$copy/$t" ] && present+=("\"$t\""); done
tests=$(IFS=,; echo "${present[*]}")
cat >> "$copy/pyproject.toml" <<TOML

[tool.mutmut]
source_paths = ["tessq"]
only_mutate = ["$path"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-n", "0", "--timeout=120", "-q", $select "-x"]
pytest_add_cli_args_test_selection = [$tests]
use_git_change_detection = false
# A mutant that loops forever is caught after 2x its tests' normal time (+5 s on a loaded machine), not 15x.
timeout_multiplier = 2.0
timeout_constant = 5.0
debug = ${MUTMUT_DEBUG:-false}
TOML

cd "$copy"
# Subprocesses (python -m tessq) must import the mutated tree, not the editable install.
mkdir -p "$copy/mutants"  # on sys.path before it exists, Python would cache it as absent
export PYTHONPATH="$copy/mutants"
python -m mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "${@:3}"  # MUTMUT_CHILDREN: parallel mutants
python -m mutmut results --all true > "$workdir/$module.results.txt" || python -m mutmut results > "$workdir/$module.results.txt"
echo "results: $workdir/$module.results.txt"
