#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# udev/61-mtls-agent.rules, checked by udevadm against fake devices.
#
# systemd 252's udevadm has no `verify`; where it has, the rules must pass it.
# `udevadm test --action=add` then runs the rules for fake sysfs devices (a
# private mount namespace with tmpfs over /sys/devices/virtual, /run and /dev,
# so nothing on the host changes; SYSTEMD_DEVICE_VERIFY_SYSFS=0 lets sd-device
# accept a sysfs tree that is not sysfs):
# - /dev/tpmrm0 gets group tss and mode 0660, from these rules alone and
#   together with the system's rules (Debian's tpm-udev: no conflict);
# - /dev/tpm0 does not get group tss;
# - a USB device with a smart-card interface (descriptors with class 0x0b)
#   is tagged for systemd and wants mtls-agent-token@.service; a USB device
#   without one is not.
# Every line udevadm reports about the rules file must be free of errors.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

RULES=${top_srcdir:-$TESTS_DIR/..}/udev/61-mtls-agent.rules
[ -f "$RULES" ] || fail "rules file not found: $RULES"
command -v udevadm >/dev/null 2>&1 || skip "udevadm is not installed: the udev rules are not checked (apt-get install udev)"
need_root
need_cmd unshare mount

# udevadm verify (systemd >= 253).
if udevadm verify --help >/dev/null 2>&1; then
	assert_ok udevadm verify --resolve-names=never "$RULES"
	log "udevadm verify: ok"
else
	log "udevadm $(udevadm --version) has no 'verify': checking with 'udevadm test' against fake devices"
fi

if ! unshare -m --propagation private true 2>/dev/null; then
	skip "cannot make a private mount namespace (unshare -m): 'udevadm test' against fake devices needs one"
fi
TSS_GID=$(getent group tss | cut -d: -f3)
[ -n "$TSS_GID" ] || skip "no group tss on this system: the rules give /dev/tpmrm0 to it"

# udev_run MODE OUT DEVICE...: in a private mount namespace with fake devices,
# runs `udevadm test --action=add` for each DEVICE (tpmrm0, tpm0, token, other)
# with the rules of MODE: "alone" (ours plus the two system files they build
# on) or "system" (ours installed next to every system rules file). Output of
# each in OUT.DEVICE.
udev_run() {
	local mode=$1 out=$2
	shift 2
	unshare -m --propagation private bash -s "$mode" "$out" "$RULES" "$@" <<'NS'
set -eu
mode=$1 out=$2 rules=$3
shift 3
mount -t tmpfs none /run
mkdir -p /run/udev/rules.d /run/realdev
mount --bind /dev /run/realdev
mount -t tmpfs none /dev
for n in null zero urandom; do
	touch "/dev/$n"
	mount --bind "/run/realdev/$n" "/dev/$n"
done
cp "$rules" /run/udev/rules.d/
if [ "$mode" = alone ]; then
	# Only our file and the system files it depends on (usb_id, ID_SMARTCARD_READER).
	mkdir -p /run/sysrules
	for f in 50-udev-default.rules 60-fido-id.rules; do
		[ -f "/usr/lib/udev/rules.d/$f" ] && cp "/usr/lib/udev/rules.d/$f" /run/sysrules/
	done
	for d in /usr/lib/udev/rules.d /lib/udev/rules.d /etc/udev/rules.d; do
		[ -d "$d" ] && mount -t tmpfs none "$d"
	done
	cp /run/sysrules/* /usr/lib/udev/rules.d/ 2>/dev/null || true
fi
v=/sys/devices/virtual
mount -t tmpfs none "$v"
dev() { # DIR SUBSYSTEM UEVENT
	mkdir -p "$1"
	printf '%b' "$3" >"$1/uevent"
	ln -s "../../../../class/$2" "$1/subsystem"
}
dev "$v/tpmrm/tpmrm0" tpmrm 'MAJOR=253\nMINOR=65536\nDEVNAME=tpmrm0\n'
dev "$v/tpm/tpm0" tpm 'MAJOR=10\nMINOR=224\nDEVNAME=tpm0\n'
# USB devices: device descriptor, configuration descriptor, one interface of
# class CLASS, one endpoint (usb_id reads the interfaces from "descriptors").
usb() { # DIR CLASS SERIAL
	mkdir -p "$1"
	printf 'MAJOR=189\nMINOR=1\nDEVNAME=bus/usb/001/002\nDEVTYPE=usb_device\nBUSNUM=001\nDEVNUM=002\nPRODUCT=1050/407/543\nTYPE=0/0/0\n' >"$1/uevent"
	ln -s ../../../../class/usb "$1/subsystem"
	printf '1050\n' >"$1/idVendor"
	printf '0407\n' >"$1/idProduct"
	printf '0543\n' >"$1/bcdDevice"
	printf 'Test\n' >"$1/manufacturer"
	printf 'Test token\n' >"$1/product"
	printf '%s\n' "$3" >"$1/serial"
	printf '00\n' >"$1/bDeviceClass"
	printf '\x12\x01\x00\x02\x00\x00\x00\x40\x50\x10\x07\x04\x43\x05\x01\x02\x03\x01' >"$1/descriptors"
	printf '\x09\x02\x19\x00\x01\x01\x00\x80\x32' >>"$1/descriptors"
	printf "\\x09\\x04\\x00\\x00\\x01\\x$2\\x00\\x00\\x00" >>"$1/descriptors"
	printf '\x07\x05\x81\x03\x08\x00\x0a' >>"$1/descriptors"
}
usb "$v/usbfake/token" 0b 'TOKEN1'
usb "$v/usbfake/other" 03 'OTHER1'
for d in "$@"; do
	case "$d" in
	tpmrm0) p=$v/tpmrm/tpmrm0 ;;
	tpm0) p=$v/tpm/tpm0 ;;
	token) p=$v/usbfake/token ;;
	other) p=$v/usbfake/other ;;
	esac
	SYSTEMD_DEVICE_VERIFY_SYSFS=0 udevadm test --action=add "$p" >"$out.$d" 2>&1 || {
		echo "udevadm test $p failed" >>"$out.$d"
		exit 1
	}
done
NS
}

# The last value of KEY (GROUP, MODE) assigned by any rule, from udevadm test's trace.
last_assign() { # FILE KEY
	sed -n "s/^[^:]*: [^ ]*\.rules:[0-9]* $2 \(.*\)$/\1/p" "$1" | tail -n 1
}
prop() { # FILE NAME
	sed -n "s/^$2=//p" "$1" | tail -n 1
}
our_lines() { # FILE
	grep -F "$(basename "$RULES")" "$1" || true
}

for mode in alone system; do
	out=$WORK/udev.$mode
	udev_run "$mode" "$out" tpmrm0 tpm0 token other ||
		fail "udevadm test ($mode) failed: $(tail -n 20 "$out".* 2>/dev/null)"
	for d in tpmrm0 tpm0 token other; do
		if our_lines "$out.$d" | grep -qiE 'invalid|error|unknown|failed|ignoring'; then
			fail "udevadm reports a problem with $(basename "$RULES") ($mode): $(our_lines "$out.$d")"
		fi
	done
	grep -q "Reading rules file: .*$(basename "$RULES")" "$out.tpmrm0" ||
		fail "udevadm test ($mode) did not read $(basename "$RULES")"

	assert_eq "$(last_assign "$out.tpmrm0" GROUP)" "$TSS_GID" "$mode: group of /dev/tpmrm0 (tss = $TSS_GID)"
	assert_eq "$(last_assign "$out.tpmrm0" MODE)" 0660 "$mode: mode of /dev/tpmrm0"
	assert_contains "$(prop "$out.tpmrm0" TAGS)" ":systemd:" "$mode: tags of tpmrm0"
	g=$(last_assign "$out.tpm0" GROUP)
	[ "$g" != "$TSS_GID" ] || fail "$mode: /dev/tpm0 gets group tss"
	assert_eq "$g" 0 "$mode: group of /dev/tpm0"

	assert_eq "$(prop "$out.token" ID_USB_INTERFACES)" ":0b0000:" "$mode: fake token interfaces"
	assert_eq "$(prop "$out.token" ID_SMARTCARD_READER)" 1 "$mode: fake token is a smart-card reader"
	assert_contains "$(prop "$out.token" TAGS)" ":systemd:" "$mode: tags of the token"
	assert_contains " $(prop "$out.token" SYSTEMD_WANTS) " " mtls-agent-token@.service " "$mode: SYSTEMD_WANTS of the token"
	assert_eq "$(prop "$out.other" ID_USB_INTERFACES)" ":030000:" "$mode: fake HID interfaces"
	assert_not_contains "$(prop "$out.other" SYSTEMD_WANTS)" "mtls-agent-token" "$mode: SYSTEMD_WANTS of a non-token USB device"
	log "$mode: tpmrm0 -> gid $TSS_GID mode 0660; tpm0 -> gid $g; token wants mtls-agent-token@.service; HID device does not"
done

# The control: a rules file that gives the raw device to tss is caught.
RULES_ORIG=$RULES
RULES=$WORK/61-mtls-agent.rules
sed 's/^SUBSYSTEM=="tpm", KERNEL=="tpm\[0-9\]\*", GROUP="root"$/SUBSYSTEM=="tpm", KERNEL=="tpm[0-9]*", GROUP="tss"/' \
	"$RULES_ORIG" >"$RULES"
cmp -s "$RULES" "$RULES_ORIG" && fail "control: could not make the broken rules file"
udev_run alone "$WORK/udev.broken" tpm0 || fail "udevadm test (control) failed"
assert_eq "$(last_assign "$WORK/udev.broken.tpm0" GROUP)" "$TSS_GID" "control: broken rules give tpm0 to tss"
log "control: a rule giving /dev/tpm0 to tss is detected"
log "PASS"
