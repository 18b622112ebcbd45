#!/bin/bash
# bash_loop: a bash script loop (the tests/README.md protocol written in bash).
#
# State set up before `ready`, all of it checked on every check:
# - shell variables: a counter incremented each loop turn, an indexed array with a fixed prefix
#   (100 squares) and one entry per turn (entry i = i*7+3), an associative array and a string
#   with a newline and a tab; the counter must advance between checks.
# - fd 3 (exec 3>file): one line "line <i>" written per turn, kept open. It must still be the
#   same file ([[ /proc/$$/fd/3 -ef file ]]), opened write-only, at the offset the loop counted
#   (fdinfo pos), and the file must hold exactly the lines written (bytes beyond only as the
#   exact continuation: after a --leave-running dump the original wrote on before it was
#   killed and the copy restored).
# - fd 4 (exec 4<file): a file of known lines; each check reads the next one with read -u 4
#   (bash seeks back to the line's end on a regular file): the offset before the read must be
#   the one after the previous check's read, and the line must be the next one.
# - fd 6: a FIFO opened read-write, never written: the loop sleeps in read -t 0.01 -u 6.
# - a trap on SIGUSR1: a check sends itself SIGUSR1 and the handler must run.
# - a background subshell (the child), looping on its own counter: it answers checks in
#   child-<pid> (its $BASHPID, its parent in /proc, its counter advancing, fd 6 still the
#   FIFO); the root checks it is alive, still its child, and aggregates its answer.
# Answers are written atomically: a temporary file, then mv.

CTL=${VZCPT_CTL:?VZCPT_CTL is not set}
answered=0
seq=0

write_file() { # name text
    local tmp="$CTL/.$1.$BASHPID"
    printf '%s' "$2" > "$tmp" && mv -f "$tmp" "$CTL/$1"
}

poll() { # 0 when a new check is asked for; sets seq
    local s
    [[ -f $CTL/check ]] || return 1
    read -r s < "$CTL/check" 2>/dev/null || return 1
    [[ $s =~ ^[0-9]+$ ]] || return 1
    (( s > answered )) || return 1
    answered=$s
    seq=$s
    return 0
}

nap() { read -r -t 0.01 -u 6 _ ; }

# fdinfo_field PID FD NAME: the value of NAME: in /proc/PID/fdinfo/FD
fdinfo_field() {
    local k v
    while read -r k v; do
        if [[ $k == "$3:" ]]; then printf '%s' "$v"; return 0; fi
    done < "/proc/$1/fdinfo/$2"
    return 1
}

stat_ppid() { # stat_ppid PID: field 4 of /proc/PID/stat
    local st
    read -r st < "/proc/$1/stat" || return 1
    st=${st##*) }
    set -- $st
    printf '%s' "$2"
}

OUT=$CTL/bash_loop.out
IN=$CTL/bash_loop.in
FIFO=$CTL/bash_loop.fifo
rm -f "$FIFO"
mkfifo "$FIFO" || exit 2
exec 6<>"$FIFO" || exit 2
for ((i = 0; i < 2000; i++)); do echo "input line $i"; done > "$IN"
exec 4<"$IN" || exit 2
in_line=0
for ((i = 0; i < 37; i++)); do
    read -r -u 4 l
    [[ $l == "input line $i" ]] || { echo "setup read '$l' at line $i" >&2; exit 2; }
done
in_line=37
in_pos=$(fdinfo_field $$ 4 pos)

# --- the child: a background subshell with its own loop ---
(
    exec 3>&- 4<&-
    me=$BASHPID
    parent=$$
    n=0
    last=-1
    while :; do
        kill -0 "$parent" 2>/dev/null || exit 0 # the root is gone (not under the harness)
        n=$((n + 1))
        if poll; then
            why=
            p=$(stat_ppid "$me")
            if [[ $BASHPID != "$me" ]]; then why="child: \$BASHPID = $BASHPID, recorded $me"
            elif [[ $p != "$parent" ]]; then why="child $me: parent is $p, expected $parent"
            elif (( n <= last )); then why="child $me: counter $n did not advance past $last"
            elif ! [[ /proc/$me/fd/6 -ef $FIFO ]]; then why="child $me: fd 6 is not $FIFO"
            fi
            last=$n
            write_file "child-$me" "$seq ${why:+FAIL: }${why:-PASS}"$'\n'
        fi
        nap
    done
) &
cpid=$!

exec 3>"$OUT" || exit 2
out_bytes=0
counter=0
last_check=-1
arr=()
for ((i = 0; i < 100; i++)); do arr+=($((i * i))); done
declare -A assoc=([alpha]=1 [beta]="two words" [gamma]=$'line\nbreak')
str=$'a string\twith a tab\nand a newline'
usr1=0
trap 'usr1=$((usr1 + 1))' USR1
mypid=$$

check() { # sets why to the reason of a failure, empty when all is well
    local i v k
    why=
    if [[ $$ != "$mypid" || $BASHPID != "$mypid" ]]; then
        why="\$\$ = $$, \$BASHPID = $BASHPID, recorded $mypid"; return; fi
    if (( counter <= last_check )); then
        why="counter $counter did not advance past $last_check"; return; fi
    last_check=$counter
    if (( ${#arr[@]} != 100 + counter )); then
        why="arr has ${#arr[@]} entries, expected $((100 + counter))"; return; fi
    for ((i = 0; i < 100; i++)); do
        (( arr[i] == i * i )) || { why="arr[$i] = ${arr[i]}, expected $((i * i))"; return; }
    done
    for ((i = 0; i < counter; i++)); do
        v=${arr[100 + i]}
        (( v == i * 7 + 3 )) || { why="arr[$((100 + i))] = $v, expected $((i * 7 + 3))"; return; }
    done
    if [[ ${#assoc[@]} != 3 || ${assoc[alpha]} != 1 || ${assoc[beta]} != "two words" ||
          ${assoc[gamma]} != $'line\nbreak' ]]; then
        why="assoc is $(declare -p assoc)"; return; fi
    if [[ $str != $'a string\twith a tab\nand a newline' ]]; then
        why="str is $(declare -p str)"; return; fi
    # fd 3: same file, write-only, at the counted offset, the file holds the lines written.
    if ! [[ /proc/$$/fd/3 -ef $OUT ]]; then
        why="fd 3 is $(readlink /proc/$$/fd/3), expected $OUT"; return; fi
    v=$(fdinfo_field $$ 3 pos)
    if [[ $v != "$out_bytes" ]]; then why="fd 3 at offset $v, expected $out_bytes"; return; fi
    v=$(fdinfo_field $$ 3 flags)
    if (( (8#$v & 3) != 1 )); then why="fd 3 flags $v, expected O_WRONLY"; return; fi
    local lines=()
    mapfile -t lines < "$OUT"
    if (( ${#lines[@]} < counter )); then
        why="$OUT has ${#lines[@]} lines, expected $counter"; return; fi
    for ((i = 0; i < ${#lines[@]}; i++)); do
        # Lines beyond $counter: the continuation written by an original left running.
        if [[ ${lines[i]} != "line $i" ]]; then
            if (( i == ${#lines[@]} - 1 && i >= counter )) && [[ "line $i" == "${lines[i]}"* ]]; then
                break # a partial last line of the original, killed mid-write
            fi
            why="$OUT line $i is '${lines[i]}', expected 'line $i' ($counter written)"; return
        fi
    done
    # fd 4: offset unchanged since the last check, the next line follows.
    v=$(fdinfo_field $$ 4 pos)
    if [[ $v != "$in_pos" ]]; then why="fd 4 at offset $v, expected $in_pos"; return; fi
    if ! read -r -u 4 v; then why="read -u 4 failed"; return; fi
    if [[ $v != "input line $in_line" ]]; then
        why="read -u 4 gave '$v', expected 'input line $in_line'"; return; fi
    in_line=$((in_line + 1))
    in_pos=$(fdinfo_field $$ 4 pos)
    if ! [[ /proc/$$/fd/6 -ef $FIFO ]]; then why="fd 6 is not $FIFO"; return; fi
    # The SIGUSR1 trap runs.
    v=$usr1
    kill -USR1 $$
    : # the trap runs between commands
    if (( usr1 != v + 1 )); then why="SIGUSR1 trap: count $usr1, expected $((v + 1))"; return; fi
    # The child: alive, ours, and its own answer.
    if ! kill -0 "$cpid" 2>/dev/null; then why="child $cpid is gone"; return; fi
    v=$(stat_ppid "$cpid")
    if [[ $v != "$$" ]]; then why="child $cpid has parent $v, expected $$"; return; fi
    local t r
    for ((t = 0; t < 2000; t++)); do
        r=
        [[ -f $CTL/child-$cpid ]] && read -r r < "$CTL/child-$cpid"
        [[ $r == "$seq "* ]] && break
        nap
    done
    if [[ $r != "$seq "* ]]; then why="child $cpid did not answer check $seq (last: '$r')"; return; fi
    if [[ $r != "$seq PASS" ]]; then r=${r#"$seq "}; why=${r#FAIL: }; return; fi
}

write_file ready $'ready\n'
while :; do
    line="line $counter"
    echo "$line" >&3
    out_bytes=$((out_bytes + ${#line} + 1))
    arr+=($((counter * 7 + 3)))
    counter=$((counter + 1))
    if poll; then
        check
        write_file result "$seq ${why:+FAIL: }${why:-PASS}"$'\n'
    fi
    nap
done
