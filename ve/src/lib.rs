//! VE lifecycle (`vzctl`): config, namespaces, cgroups, rootfs, network. Comes with issue 3.
#![forbid(unsafe_code)]
