/// Every top-level setting xl knows (from xl.cfg(5) and xl's parser, Xen 4.17 plus a few
/// newer ones), so a config written for Xen gets no "unknown key" warnings for settings
/// Procvisor merely does not use. Only names missing from here are warned about.
enum XLKnownKeys {
    static let all: Set<String> = [
        // Domain selection and identity
        "name", "type", "builder", "uuid", "pool", "seclabel", "init_seclabel", "driver_domain",
        "passthrough", "xend_suspend_evtchn_compat", "vmtrace_buf_kb", "vpmu", "nomigrate",
        "max_grant_frames", "max_maptrack_frames", "max_grant_version", "max_event_channels",
        "device_tree", "dtdev", "trap_unmapped_accesses",
        // CPUs and scheduling
        "vcpus", "maxvcpus", "cpus", "cpus_soft", "cpu_weight", "cap", "period", "slice", "latency",
        "extratime", "cpuid", "msr_relaxed",
        // Memory
        "memory", "maxmem", "vnuma", "shadow_memory", "e820_host", "mmio_hole", "rdm", "rdm_mem_boundary",
        "llc_colors",
        // Events
        "on_poweroff", "on_reboot", "on_watchdog", "on_crash", "on_soft_reset",
        // Booting
        "kernel", "ramdisk", "cmdline", "root", "extra", "firmware", "bootloader", "bootloader_args",
        "pvshim", "pvshim_path", "pvshim_cmdline", "pvshim_extra",
        // Devices
        "disk", "vif", "vif2", "vtpm", "p9", "pvcalls", "vfb", "vkb", "vdispl", "vsnd", "channel", "virtio",
        "pci", "pci_permissive", "pci_msitranslate", "pci_seize", "pci_power_mgmt",
        "usbctrl", "usbdev", "ioports", "irqs", "iomem",
        // HVM
        "boot", "hdtype", "hap", "oos", "bios", "bios_path_override", "firmware_override", "pae", "acpi",
        "acpi_s3", "acpi_s4", "acpi_laptop_slate", "apic", "nx", "hpet", "vpt_align", "viridian",
        "timer_mode", "altp2m", "altp2mhvm", "nestedhvm", "tsc_mode", "localtime", "rtc_timeoffset",
        "vendor_device", "mca_caps", "smbios_firmware", "acpi_firmware", "ms_vm_genid",
        "vga", "stdvga", "videoram", "vnc", "vnclisten", "vncdisplay", "vncunused", "vncpasswd", "vncviewer",
        "keymap", "sdl", "opengl", "display", "xauthority", "nographic",
        "spice", "spicehost", "spiceport", "spicetls_port", "spicedisable_ticketing", "spicepasswd",
        "spiceagent_mouse", "spicevdagent", "spice_clipboard_sharing", "spiceusbredirection",
        "spice_image_compression", "spice_streaming_video",
        "serial", "soundhw", "vkb_device", "usb", "usbdevice", "usbversion", "xen_platform_pci",
        "gfx_passthru",
        // Device model
        "device_model", "device_model_override", "device_model_version", "device_model_stubdomain_override",
        "device_model_stubdomain_seclabel", "device_model_args", "device_model_args_pv",
        "device_model_args_hvm", "device_model_user", "dm_restrict", "stubdomain_memory",
        "stubdomain_kernel", "stubdomain_ramdisk", "stubdomain_cmdline",
        // Arm
        "gic_version", "vuart", "tee", "sve", "nr_spis",
    ]
}
