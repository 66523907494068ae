#!/bin/busybox sh
# PID 1 of the throw-away guest (fsbridge/bench/guest.py). It loads the virtio, 9p, fuse, virtiofs and
# virtio-net modules, mounts the host's / read-only over 9p as the userland (so python and the project's
# virtualenv are at their host paths), mounts the requested shares at their paths, runs the command in a
# chroot, leaves its exit status in the control share, and powers off. Markers on the serial console let
# the host tell "booted" from "hung", and see the exit status even if the control share failed.
/bin/busybox mkdir -p /proc /sys /dev /ctl /newroot
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

fail() {
    echo "FSBRIDGE-GUEST-FAILED: $*"
    sync
    poweroff -f
    sleep 5
}

for m in $(cat /modules/order); do
    insmod "/modules/$m" || fail "insmod $m"
done

NINEP="trans=virtio,version=9p2000.L,msize=512000"
# 9p devices appear asynchronously after virtio_pci probes: retry the first mount briefly.
i=0
until mount -t 9p -o "$NINEP,cache=none" ctl /ctl 2>/dev/null; do
    i=$((i + 1))
    [ $i -gt 100 ] && fail "no control share (9p tag ctl)"
    usleep 50000
done
. /ctl/config

mount -t 9p -o "$NINEP,cache=loose,ro" hostroot /newroot || fail "cannot mount the host's / (9p tag hostroot)"
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
for d in /dev/shm /tmp /run /var/tmp /mnt; do
    mount -t tmpfs -o mode=1777 tmpfs "$R$d" || fail "tmpfs on $d"
done
mkdir -p $R/run/fsbridge-guest
mount --bind /ctl $R/run/fsbridge-guest

# /ctl/shares: one line per share: KIND TAG CACHE MODE GUEST_PATH (the path last: it may hold spaces)
while read -r kind tag cache mode path; do
    [ -n "$kind" ] || continue
    mkdir -p "$R$path" || fail "cannot create the mount point $path"
    if [ "$kind" = 9p ]; then
        mount -t 9p -o "$NINEP,cache=$cache,$mode" "$tag" "$R$path" || fail "mount 9p $tag on $path"
    else
        mount -t virtiofs -o "$mode" "$tag" "$R$path" || fail "mount virtiofs $tag on $path"
    fi
done < /ctl/shares

ip link set lo up
if [ "$FSB_NET" = 1 ]; then
    ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 \
        || fail "network setup"
fi

echo "FSBRIDGE-GUEST-READY"
chroot $R /bin/sh /run/fsbridge-guest/command.sh </dev/null >/ctl/output 2>&1
rc=$?
echo "$rc" > /ctl/exit_code
sync
echo "FSBRIDGE-GUEST-EXIT $rc"
# Unmount the shares (deepest first) so everything the command wrote reaches the host before power-off.
tac /proc/mounts | while read -r dev point rest; do
    case "$point" in "$R"/*) umount "$point" 2>/dev/null || umount -l "$point" 2>/dev/null ;; esac
done
poweroff -f
