"""A whole machine under qemu (TCG): the VM wrapper and a bootable Debian "server" disk."""
