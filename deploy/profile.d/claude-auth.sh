# claude-auth: one line at an interactive login when your Claude login needs you.
# Installed as /etc/profile.d/claude-auth.sh. It reads only two small files that your
# own sync keeps in ~/.local/state/claude-auth-sync (no Python, no Vault, nothing
# secret): `needs-you`, written while the last sync said only you can fix the login,
# and `reauth-by` ("<epoch seconds> <YYYY-MM-DD> <command>"), the date you must log
# in again by, printed from three days before it. Details: `claude-auth whoami`.
case $- in
*i*)
    _claude_auth_dir="${HOME:-/nonexistent}/.local/state/claude-auth-sync"
    if [ -f "$_claude_auth_dir/needs-you" ] && [ ! -L "$_claude_auth_dir/needs-you" ]; then
        # One line, at most 400 bytes, no control characters: it is printed to a terminal.
        head -c 400 "$_claude_auth_dir/needs-you" | head -n 1 | tr -d '\000-\011\013-\037\177'
    elif [ -f "$_claude_auth_dir/reauth-by" ] && [ ! -L "$_claude_auth_dir/reauth-by" ]; then
        read -r _claude_auth_at _claude_auth_day _claude_auth_rest < "$_claude_auth_dir/reauth-by" || true
        case "$_claude_auth_at" in
        '' | *[!0-9]*) ;;
        *)
            case "$_claude_auth_day" in
            [0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9])
                if [ ${#_claude_auth_at} -le 12 ] && [ "$_claude_auth_at" -lt $(( $(date +%s) + 259200 )) ]; then
                    printf 'claude-auth: your Claude login must be renewed by %s. Run: %s   (details: claude-auth whoami)\n' \
                        "$_claude_auth_day" "$(printf '%.200s' "$_claude_auth_rest" | tr -d '\000-\037\177')"
                fi ;;
            esac ;;
        esac
    fi
    unset _claude_auth_dir _claude_auth_at _claude_auth_day _claude_auth_rest
    ;;
esac
