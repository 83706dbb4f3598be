#!/usr/bin/env bash
# Installs Procvisor the way a Xen toolstack is installed, or removes it again.
#
#   scripts/install.sh [--from DIR] [PREFIX]     install (PREFIX defaults to /usr/local)
#   scripts/install.sh --uninstall [PREFIX]      remove what an install put in PREFIX
#
# Without --from it installs what is missing and builds the release products first; --from DIR
# installs the products already built in DIR (e.g. .build/debug).
#
# What goes where (nothing with a generic name lands on PATH):
#   PREFIX/sbin/xl, PREFIX/sbin/procvisord                 the toolstack and the supervisor
#   PREFIX/lib/procvisor/bin/blkback, netback              the driver domains (found by procvisord)
#   PREFIX/lib/procvisor/guests/NAME                       the example guests
#   PREFIX/share/procvisor/examples/DIR/NAME.cfg           their xl.cfg files, kernel= pointing above
#   PREFIX/lib/systemd/system/procvisord.service           a systemd unit for the supervisor
#   PREFIX/share/bash-completion/completions/xl            bash completion for xl
#   PREFIX/share/man/man1/xl.1, man5/xl.cfg.5              manual pages
#   PREFIX/share/procvisor/install-manifest                what was installed, for --uninstall
set -euo pipefail
self=$(realpath "$0")

usage() { sed -n '2,9p' "$self" | sed 's/^# \{0,1\}//'; }

from="" uninstall=0 prefix=/usr/local
while [ $# -gt 0 ]; do
    case "$1" in
        --from) [ $# -ge 2 ] || { echo "install.sh: --from needs a directory" >&2; exit 2; }; from="$2"; shift 2 ;;
        --uninstall) uninstall=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) prefix="$1"; shift ;;
    esac
done
# Paths given are the caller's, resolved before the script moves to the repository.
prefix=$(realpath -m "$prefix")
[ -z "$from" ] || from=$(realpath "$from")
cd "$(dirname "$self")/.."
manifest="$prefix/share/procvisor/install-manifest"

if [ "$uninstall" = 1 ]; then
    [ -f "$manifest" ] || { echo "install.sh: nothing of Procvisor is installed in $prefix (no $manifest)" >&2; exit 1; }
    # Files first, then the directories the install made, deepest first, each only if empty.
    grep '^file ' "$manifest" | cut -c6- | while IFS= read -r f; do rm -f -- "$prefix/$f"; done
    rm -f -- "$manifest"
    made=$(cat "$manifest.dirs" 2>/dev/null || true)
    rm -f -- "$manifest.dirs"
    rmdir -- "$prefix/share/procvisor" 2>/dev/null || true
    printf '%s\n' "$made" | grep '^dir ' | cut -c5- | grep -vx '\.' | sort -r | while IFS= read -r d; do
        rmdir -- "$prefix/$d" 2>/dev/null || true
    done
    # The prefix itself, when the install made it.
    if printf '%s\n' "$made" | grep -qx 'dir \.'; then rmdir -- "$prefix" 2>/dev/null || true; fi
    echo "Procvisor removed from $prefix"
    exit 0
fi

if [ -z "$from" ]; then
    bash scripts/install-deps.sh
    swift build -c release
    from=.build/release
fi
guests=(hello spinner evil pingpong balloon-demo blkcheck blkbench ping udp-echo kvstore kvclient netbench)
drivers=(blkback netback)
for p in xl procvisord "${drivers[@]}" "${guests[@]}"; do
    [ -x "$from/$p" ] || { echo "install.sh: $from/$p is missing: build first (swift build -c release)" >&2; exit 1; }
done
if [ -f "$manifest" ]; then
    echo "install.sh: Procvisor is installed in $prefix already; run scripts/install.sh --uninstall $prefix first" >&2
    exit 1
fi

files=() dirs=()
[ -d "$prefix" ] || dirs+=(".")
# A failure part way takes back what this run put in place (there is no manifest yet).
installed=0
undo() {
    [ "$installed" = 1 ] && return
    for f in "${files[@]}"; do rm -f -- "$prefix/$f"; done
    for ((i = ${#dirs[@]} - 1; i >= 0; i--)); do
        d=${dirs[i]}; [ "$d" != . ] || d=""
        rmdir -- "$prefix/$d" 2>/dev/null || true
    done
}
trap undo EXIT
mkdirs() {  # creates a directory and its missing parents under PREFIX, noting the ones it made
    local rel="$1" path="" part
    IFS=/ read -ra parts <<< "$rel"
    for part in "${parts[@]}"; do
        path="${path:+$path/}$part"
        if [ ! -d "$prefix/$path" ]; then mkdir -p -- "$prefix/$path"; dirs+=("$path"); fi
    done
}
put() {  # put SOURCE RELATIVE-DESTINATION MODE
    mkdirs "$(dirname "$2")"
    install -m "$3" -- "$1" "$prefix/$2"
    files+=("$2")
}
mkdir -p -- "$prefix"

put "$from/xl" sbin/xl 0755
put "$from/procvisord" sbin/procvisord 0755
for d in "${drivers[@]}"; do put "$from/$d" "lib/procvisor/bin/$d" 0755; done
for g in "${guests[@]}"; do put "$from/$g" "lib/procvisor/guests/$g" 0755; done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; undo' EXIT
# The example configs, their kernel= pointing at the installed guests and driver domains.
for cfg in examples/*/*.cfg; do
    dir=$(basename "$(dirname "$cfg")")
    [ "$dir" != guest-template ] || continue  # a package to copy and build, not an installed guest
    out="$tmp/$dir-$(basename "$cfg")"
    sed -E -e "s#^kernel = \"\\.build/release/(blkback|netback)\"#kernel = \"$prefix/lib/procvisor/bin/\\1\"#" \
           -e "s#^kernel = \"\\.build/release/([^\"]*)\"#kernel = \"$prefix/lib/procvisor/guests/\\1\"#" \
           -e "s#^\\# Build first .*#\\# Installed by scripts/install.sh into $prefix.#" "$cfg" > "$out"
    put "$out" "share/procvisor/examples/$dir/$(basename "$cfg")" 0644
done

cat > "$tmp/procvisord.service" <<EOF
[Unit]
Description=Procvisor supervisor: the hypervisor and dom0 toolstack of Procvisor domains
Documentation=man:xl(1) man:xl.cfg(5)
After=network.target

[Service]
Type=forking
Environment=PROCVISOR_RUNDIR=/run/procvisor
ExecStart=$prefix/sbin/procvisord --daemonize
PIDFile=/run/procvisor/procvisord.pid
# The supervisor shuts its domains down itself on SIGTERM; whatever is left then goes.
KillMode=mixed
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
EOF
put "$tmp/procvisord.service" lib/systemd/system/procvisord.service 0644

# Bash completion: the subcommands this xl has, then domain names or files by command.
commands=$("$from/xl" help | awk '/^ [a-z]/ {print $1}' | tr '\n' ' ')
cat > "$tmp/xl.bash" <<EOF
# bash completion for Procvisor's xl
_procvisor_xl() {
    local cur=\${COMP_WORDS[COMP_CWORD]}
    if [ "\$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=(\$(compgen -W "$commands help" -- "\$cur"))
        return
    fi
    case "\${COMP_WORDS[1]}" in
        create|restore|migrate-receive|live-update) COMPREPLY=(\$(compgen -f -- "\$cur")) ;;
        save) if [ "\$COMP_CWORD" -eq 2 ]; then COMPREPLY=(\$(compgen -W "\$(xl list 2>/dev/null | awk 'NR > 1 {print \$1}')" -- "\$cur"));
              else COMPREPLY=(\$(compgen -f -- "\$cur")); fi ;;
        help) COMPREPLY=(\$(compgen -W "$commands" -- "\$cur")) ;;
        list|info|dmesg|network-filter) ;;
        *) COMPREPLY=(\$(compgen -W "\$(xl list 2>/dev/null | awk 'NR > 1 {print \$1}')" -- "\$cur")) ;;
    esac
}
complete -F _procvisor_xl xl
EOF
put "$tmp/xl.bash" share/bash-completion/completions/xl 0644

# xl(1) from xl's own help, so it says what this xl does; xl.cfg(5) from the repository.
roff() { sed -e 's/\\/\\e/g' -e "s/^\\./\\\\\\&./" -e "s/^'/\\\\\\&'/"; }
{
    echo '.TH XL 1 "" "Procvisor" "Procvisor manual"'
    echo '.SH NAME'
    echo 'xl \- the Procvisor toolstack: Xen'"'"'s xl for domains that are Linux processes'
    echo '.SH SYNOPSIS'
    echo '.B xl'
    echo '.I subcommand'
    echo '.RI [ args ]'
    echo '.SH DESCRIPTION'
    echo 'xl drives the Procvisor supervisor, procvisord, with Xen'"'"'s subcommands, Xen'"'"'s xl.cfg(5) files and'
    echo 'Xen'"'"'s output. The first xl starts the supervisor when none runs in its run directory.'
    echo 'A subcommand xl does not have is answered "command not implemented", exit status 1.'
    echo '.SH COMMANDS'
    for c in $commands; do
        echo '.SS '"$c"
        echo '.nf'
        "$from/xl" help "$c" | roff
        echo '.fi'
    done
    echo '.SH ENVIRONMENT'
    echo '.TP'
    echo '.B PROCVISOR_RUNDIR'
    echo 'The supervisor'"'"'s run directory; default /run/procvisor for root, else $XDG_RUNTIME_DIR/procvisor,'
    echo 'else /tmp/procvisor-UID. "xl info run_directory" prints the one xl reached.'
    echo '.TP'
    echo '.B PROCVISOR_NO_AUTOSTART'
    echo 'Set to 1: xl never starts a supervisor.'
    echo '.TP'
    echo '.B XENSTORED_PATH'
    echo 'The XenStore socket; default the supervisor'"'"'s ("xl info xenstore_socket").'
    echo '.SH FILES'
    echo "$prefix/share/procvisor/examples/ \- example domain configurations"
    echo '.SH SEE ALSO'
    echo '.BR xl.cfg (5)'
} > "$tmp/xl.1"
put "$tmp/xl.1" share/man/man1/xl.1 0644
put docs/man/xl.cfg.5 share/man/man5/xl.cfg.5 0644

printf 'file %s\n' "${files[@]}" > "$tmp/manifest"
: > "$tmp/manifest.dirs"
[ ${#dirs[@]} -eq 0 ] || printf 'dir %s\n' "${dirs[@]}" > "$tmp/manifest.dirs"
install -m 0644 "$tmp/manifest" "$manifest"
install -m 0644 "$tmp/manifest.dirs" "$manifest.dirs"
installed=1
echo "Procvisor installed in $prefix: put $prefix/sbin on PATH (it holds xl and procvisord only);"
echo "examples in $prefix/share/procvisor/examples; remove with: scripts/install.sh --uninstall $prefix"
# Debian's xen-utils-common has an xl of its own (a wrapper that looks for a Xen hypervisor).
current=$(command -v xl 2>/dev/null || true)
if [ -n "$current" ] && [ "$current" != "$prefix/sbin/xl" ]; then
    echo "note: the xl your PATH finds now is $current, not Procvisor's: put $prefix/sbin before $(dirname "$current") on PATH"
fi
