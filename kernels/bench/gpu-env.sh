# Sourced by the device scripts (run from the repository root on the GPU machine): OUT (what
# comes back, default /tmp/out), T0 (the start), `left N` (N seconds, or what is left before
# END_S less `LEFT_MARGIN` if fewer, at least 1; END_S defaults to the script's DEFAULT_END_S
# or 560) and the CUDA 13 libraries of the machine's PyPI nvidia packages on the loader path.
OUT=${OUT:-/tmp/out}
T0=$(date +%s)
left() {
  local l=$(( T0 + ${END_S:-${DEFAULT_END_S:-560}} - $(date +%s) - ${LEFT_MARGIN:-5} ))
  [ "$l" -lt "$1" ] && echo $(( l > 1 ? l : 1 )) || echo "$1"
}
mkdir -p "$OUT"
LIB=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export LD_LIBRARY_PATH=$LIB:$LD_LIBRARY_PATH
