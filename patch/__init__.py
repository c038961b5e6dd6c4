"""dnf patching: check, advisories, apply, needs-restarting, reboot policy, report (issue [F])."""
