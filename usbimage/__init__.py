"""The USB rescue drive: detection, format, rescue boot image, restore (issue [H])."""
