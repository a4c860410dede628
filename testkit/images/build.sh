#!/usr/bin/env bash
# The recipe of ec2ami's test images: a small Debian (bookworm, minbase, the cloud
# kernel, OpenSSH) that configures itself from the instance metadata service at first
# boot as EC2 images do (guest/ec2-firstboot), on GPT disks that boot by BIOS (GRUB
# i386-pc in a BIOS boot partition), by UEFI (GRUB x86_64-efi at the removable path of
# an EFI System Partition), or both, made without loop devices or mounts: sgdisk for
# the partitions, mke2fs -d at the root partition's offset, mkfs.vfat --offset + mtools
# for the ESP, grub-mkimage's core written into the BIOS boot partition with boot.img's
# and diskboot's sector pointers patched as grub-bios-setup patches them.
#
#   testkit/images/build.sh OUTDIR
#
# Needs root (debootstrap), the network to the Debian mirror (EC2AMI_DEBIAN_MIRROR,
# default http://deb.debian.org/debian), and debootstrap, gdisk, e2fsprogs, dosfstools,
# mtools, grub-pc-bin, grub-efi-amd64-bin, qemu-utils. scripts/build-test-images calls
# it and caches the result by a hash of this directory.
#
# Images (OUTDIR):
#   polyglot.raw     BIOS and UEFI
#   bios-only.raw    no ESP
#   uefi-only.qcow2  no BIOS boot code (and in qcow2, to boot a non-raw format)
#   no-sshd.raw      BIOS and UEFI, ssh.service masked
#   panic.raw        BIOS and UEFI, booted without its initramfs: the kernel panics
#                    ("VFS: Unable to mount root fs")
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUTDIR}
mirror=${EC2AMI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=linux-image-cloud-amd64,openssh-server,systemd-sysv,udev,curl

log() { printf '==> %s\n' "$*" >&2; }

mkdir -p "$out"
work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root

# Disk layout (512-byte sectors), the same for every image so the root file system is
# always at one offset; an image without a partition leaves its space unused.
disk_size=1G
bios_first=2048 bios_last=4095                 # 1 MiB BIOS boot partition
esp_first=4096 esp_last=135167                 # 64 MiB EFI System Partition
root_first=135168 root_mib=954                 # ext4, label ec2root
grub_modules="part_gpt part_msdos ext2 search search_label normal linux serial terminal echo test gzio boot configfile"

if [ -n "${EC2AMI_TEST_ROOTFS:-}" ]; then
    # Working on the recipe: start from a copy of an earlier debootstrap.
    log "copying the root file system from $EC2AMI_TEST_ROOTFS"
    cp -a "$EC2AMI_TEST_ROOTFS" "$root"
else
    log "debootstrap bookworm (minbase) from $mirror"
    debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
        tail -20 "$work/debootstrap.log" >&2
        exit 1
    }
fi

log "configuring the guest"
kver=$(basename "$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)")
kver=${kver#vmlinuz-}
chroot "$root" useradd --create-home --shell /bin/bash ec2-user
echo ec2ami-test > "$root/etc/hostname"
echo 'LABEL=ec2root / ext4 errors=remount-ro 0 1' > "$root/etc/fstab"
install -m 755 "$here/guest/ec2-firstboot" "$root/usr/local/sbin/ec2-firstboot"
install -m 644 "$here/guest/ec2-firstboot.service" "$root/etc/systemd/system/ec2-firstboot.service"
install -m 644 "$here/guest/20-dhcp.network" "$root/etc/systemd/network/20-dhcp.network"
chroot "$root" systemctl enable --quiet systemd-networkd.service ec2-firstboot.service
# Every boot is a first boot: host keys and machine id are made by the guest.
rm -f "$root"/etc/ssh/ssh_host_*
: > "$root/etc/machine-id"
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/*

# GRUB's configuration on the root file system; `initrd` is left out for the panic image.
grub_cfg() {
    local initrd=$1
    mkdir -p "$root/boot/grub"
    {
        echo 'serial --unit=0 --speed=115200'
        echo 'terminal_input serial console'
        echo 'terminal_output serial console'
        echo "echo 'Loading Linux $kver ...'"
        echo "linux /boot/vmlinuz-$kver root=LABEL=ec2root ro console=tty0 console=ttyS0,115200"
        if [ "$initrd" = yes ]; then
            echo "echo 'Loading initial ramdisk ...'"
            echo "initrd /boot/initrd.img-$kver"
        fi
        echo 'boot'
    } > "$root/boot/grub/grub.cfg"
}

log "GRUB images"
grub-mkimage -O i386-pc -o "$work/core.img" -c "$here/guest/grub-early.cfg" -p /boot/grub \
    biosdisk $grub_modules
grub-mkimage -O x86_64-efi -o "$work/bootx64.efi" -c "$here/guest/grub-early.cfg" -p /boot/grub \
    efi_gop $grub_modules
core_sectors=$(( ($(stat -c %s "$work/core.img") + 511) / 512 ))
if [ "$core_sectors" -gt $((bios_last - bios_first + 1)) ]; then
    echo "core.img ($core_sectors sectors) does not fit the BIOS boot partition" >&2
    exit 1
fi

# Write VALUE as an N-byte little-endian integer at byte OFFSET of FILE.
put_le() {
    local file=$1 offset=$2 n=$3 value=$4 bytes="" i
    for ((i = 0; i < n; i++)); do
        bytes+=$(printf '\\x%02x' $(((value >> (8 * i)) & 255)))
    done
    printf "$bytes" | dd of="$file" bs=1 seek="$offset" conv=notrunc status=none
}

# make_disk FILE bios|uefi|both: partitions, root file system, boot code.
make_disk() {
    local img=$1 how=$2
    local parts=()
    rm -f "$img"
    truncate -s "$disk_size" "$img"
    case $how in bios | both) parts+=(-n "1:$bios_first:$bios_last" -t 1:EF02 -c 1:bios-boot) ;; esac
    case $how in uefi | both) parts+=(-n "2:$esp_first:$esp_last" -t 2:EF00 -c 2:EFI) ;; esac
    parts+=(-n "3:$root_first:+${root_mib}M" -t 3:8300 -c 3:root)
    sgdisk --clear "${parts[@]}" "$img" > /dev/null

    mke2fs -q -F -t ext4 -L ec2root -d "$root" -E "offset=$((root_first * 512))" "$img" "${root_mib}M"

    if [ "$how" != bios ]; then
        local at="$img@@$((esp_first * 512))"
        mkfs.vfat -F 32 -s 1 -n EFI --offset "$esp_first" "$img" $(((esp_last - esp_first + 1) / 2)) > /dev/null 2>&1
        mmd -i "$at" ::/EFI ::/EFI/BOOT
        mcopy -i "$at" "$work/bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
    fi

    if [ "$how" != uefi ]; then
        # What grub-bios-setup does for a core image in a BIOS boot partition: boot.img's
        # code (bytes 0-439, the partition table left alone) with the core's first sector
        # at 0x5c and the drive check at 0x66 turned into NOPs (a hard disk), the core in
        # the partition, and diskboot's block list (the last 12 bytes of the core's first
        # sector: start LBA, sector count, segment) pointing at the rest of the core.
        dd if=/usr/lib/grub/i386-pc/boot.img of="$img" bs=1 count=440 conv=notrunc status=none
        put_le "$img" $((0x5c)) 8 "$bios_first"
        printf '\x90\x90' | dd of="$img" bs=1 seek=$((0x66)) conv=notrunc status=none
        dd if="$work/core.img" of="$img" bs=512 seek="$bios_first" conv=notrunc status=none
        put_le "$img" $((bios_first * 512 + 500)) 8 $((bios_first + 1))
        put_le "$img" $((bios_first * 512 + 508)) 2 $((core_sectors - 1))
    fi
}

log "polyglot.raw, bios-only.raw, uefi-only.qcow2"
grub_cfg yes
make_disk "$work/polyglot.raw" both
make_disk "$work/bios-only.raw" bios
make_disk "$work/uefi-only.raw" uefi
qemu-img convert -q -f raw -O qcow2 "$work/uefi-only.raw" "$work/uefi-only.qcow2"
rm "$work/uefi-only.raw"

log "no-sshd.raw"
ln -s /dev/null "$root/etc/systemd/system/ssh.service"
make_disk "$work/no-sshd.raw" both
rm "$root/etc/systemd/system/ssh.service"

log "panic.raw"
grub_cfg no
make_disk "$work/panic.raw" both

for f in polyglot.raw bios-only.raw uefi-only.qcow2 no-sshd.raw panic.raw; do
    mv "$work/$f" "$out/$f"
done
echo "$kver" > "$out/kernel-version"
log "done: $out"
