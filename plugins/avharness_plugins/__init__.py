"""The built-in plugins of avharness, one sub-package per kind, loaded through entry points like anyone's."""
