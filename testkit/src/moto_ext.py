"""moto's server, extended to keep the AMI state ec2ami's tests need.

Run this file instead of ``python3 -m moto.server``, with the same arguments: it patches
moto in this process, then starts moto's own server. ec2ami embeds it
(testkit/src/moto_ext.py, ``include_str!``) and ``MotoServer`` writes it to a temporary
file and runs it.

moto 5 keeps an AMI's name and description and little else, so tests of publish,
validate and prune could only check the requests ec2ami sent, not the state AWS would
hold. This module changes, with AWS's semantics:

- RegisterImage keeps architecture, boot mode, ENA, SR-IOV, IMDS, TPM, root device,
  virtualisation type, the block device mappings exactly as given (moto adds a fake
  15 GiB snapshot instead) and the image tags; it refuses what AWS refuses: a malformed
  or duplicate name, an unknown architecture, boot mode, IMDS or volume type, a missing
  snapshot, a volume smaller than its snapshot, tags for another resource type.
- CopyImage copies those attributes, makes one snapshot per EBS mapping in the
  destination region (described as AWS describes them), applies TagSpecifications and
  CopyImageTags, honours ClientToken, refuses a duplicate name, and answers
  InvalidAMIID.NotFound for an unknown source (moto: HTTP 500).
- EnableImageDeprecation / DisableImageDeprecation (not in moto) set the time
  DescribeImages shows as DeprecationTime.
- DeregisterImage honours DeleteAssociatedSnapshots, and DeleteSnapshot refuses a
  snapshot a registered image still maps (InvalidSnapshot.InUse), so prune's order of
  deletion is tested as AWS would enforce it.
- DescribeImages understands the block-device-mapping.* and other attribute filters
  (moto: HTTP 500).
- DescribeImageAttribute answers every attribute an AMI has (moto: HTTP 500 or empty).
- Image block public access per region (not in moto); ModifyImageAttribute refuses to
  make an image public while new sharing is blocked. Harness-only: with the realism
  ``bpa_delay`` a change is in force only that long after it is asked for, and
  ``POST /moto-api/ec2ami/bpa-in-force`` puts every pending change in force at once,
  for a test to move on when it says.
- DescribeSnapshots honours OwnerIds (moto returns every owner's snapshots).
- DescribeImages, DescribeSnapshots and DescribeLaunchTemplateVersions paginate with
  MaxResults and NextToken as AWS does (moto answers everything, or for launch template
  versions silently cuts the answer at 15 with no NextToken). Harness-only:
  ``MOTO_EXT_PAGE_SIZE=N`` in moto's environment caps every such page at N items, so
  that a small test world still needs several pages and a client that ignores NextToken
  fails.
- Harness-only, never in AWS: the tag ``moto-ext:created-at`` (an RFC 3339 time) on an
  image or snapshot sets its CreationDate or StartTime (moto stamps "now"), so tests can
  build a history of weekly images; and ``POST /moto-api/ec2ami/generate`` (JSON) makes
  images and snapshots directly in moto's model, for benchmarks that need tens of
  thousands of them (creating them through the API would take minutes).
- With EC2AMI_MOTO_OPT_IN=all, the account is opted in to every opt-in region (moto
  lists them as not-opted-in), so benchmarks can publish to 30+ enabled regions.

The image lifecycle (none of it in moto), with AWS's semantics and errors:

- Deregistration protection: EnableImageDeregistrationProtection (WithCooldown) and
  DisableImageDeregistrationProtection, shown as DeregistrationProtection (`enabled`,
  `enabled-with-cooldown`, `disabled-until TIME`); DeregisterImage refuses a protected
  image, and disabling a protection enabled with the cooldown keeps the image protected
  for the cooldown (24 hours; harness-only: ``cooldown_seconds`` of the config hook
  below shortens it; ``POST /moto-api/ec2ami/end-cooldowns`` ends every running one
  at once, for a test to move on when it says). A copy is not protected (CopyImage does not carry it).
- CopyImage checks SnapshotCopyCompletionDurationMinutes (15-minute steps, 15 to 2880)
  and carries UEFI data; harness-only: ``copy_pending_seconds`` keeps every new copy
  `pending` that long, so that waiting for copies can be watched on the wire, and
  ``POST /moto-api/ec2ami/copies-ready`` ends every such wait at once.
- RegisterImage keeps UefiData (at most 64,000 characters, refused with legacy-bios),
  answered by DescribeImageAttribute uefiData.
- DisableImage / EnableImage: a disabled image is hidden from DescribeImages unless
  IncludeDisabled, loses every launch permission (EnableImage gives none back), cannot
  be shared, and RunInstances refuses it.
- Snapshot block public access per region (Get/Enable/DisableSnapshotBlockPublicAccess);
  ModifySnapshotAttribute refuses a public share while it is on.
- The Recycle Bin: the rbin service's CreateRule, ListRules, GetRule and DeleteRule
  (region-level rules with exclusion tags, tag-level rules); DeregisterImage and
  DeleteSnapshot put what a rule covers in the bin for its retention;
  ListImagesInRecycleBin, ListSnapshotsInRecycleBin, RestoreImageFromRecycleBin and
  RestoreSnapshotFromRecycleBin.
- Service Quotas GetServiceQuota answers EC2's "Public AMIs" (L-0E3CBAB9): 5, AWS's
  default; harness-only: ``public_ami_quota`` (a number, or per region) and
  ``service_quotas_denied`` (AccessDeniedException) in the config hook.
- LastLaunchedTime in DescribeImages; harness-only: ``POST
  /moto-api/ec2ami/last-launched`` ({"region", "image_id", "time"}) sets it, as AWS
  would report a launch (other accounts' launches leave no instance of ours).
- GetConsoleScreenshot (not in moto) answers a real PNG of the instance's screen, and
  GetConsoleOutput answers the console the harness wired (``console_output`` of the
  config hook: a text, or a file read at each request, such as a locally booted
  guest's live console log) instead of moto's fixed 2006 Xen sample.
- Harness-only ``POST /moto-api/ec2ami/config`` (JSON) sets the knobs above; they are
  never AWS behaviour, only a way to run AWS's slow clock fast.

Everything else is moto's. When moto lacks any symbol patched or relied on here, the
script exits non-zero before serving, naming what is missing, so that a moto upgrade
breaks the tests loudly instead of quietly testing less.
"""

import datetime
import importlib
import inspect
import json
import os
import re
import sys
import threading
import time

# The symbols this module replaces or relies on, as "module:attribute.path".
REQUIRED = [
    "moto.server:main",
    "moto.core.responses:ActionResult",
    # Answers are built from model attributes found by their snake_case names.
    "moto.core.serialize:XFormedAttributePicker",
    "moto.ec2.exceptions:EC2ClientError",
    "moto.ec2.exceptions:InvalidAMIIdError",
    "moto.ec2.exceptions:InvalidSnapshotInUse",
    "moto.ec2.models:ec2_backends",
    "moto.ec2.models.amis:Ami.block_device_mappings",
    "moto.ec2.models.amis:Ami.get_filter_value",
    "moto.ec2.models.amis:AmiBackend.deregister_image",
    "moto.ec2.models.amis:AmiBackend.describe_images",
    "moto.ec2.models.elastic_block_store:EBSBackend.create_volume",
    "moto.ec2.models.elastic_block_store:EBSBackend.create_snapshot",
    "moto.ec2.models.elastic_block_store:EBSBackend.delete_volume",
    "moto.ec2.models.elastic_block_store:EBSBackend.delete_snapshot",
    "moto.ec2.models.availability_zones_and_regions:"
    "RegionsAndZonesBackend.describe_availability_zones",
    "moto.ec2.responses:EC2Response",
    "moto.ec2.responses._base_response:EC2BaseResponse._get_param",
    "moto.ec2.responses._base_response:EC2BaseResponse._filters_from_querystring",
    "moto.ec2.responses._base_response:EC2BaseResponse.error_on_dryrun",
    "moto.ec2.responses.amis:AmisResponse.register_image",
    "moto.ec2.responses.amis:AmisResponse.copy_image",
    "moto.ec2.responses.amis:AmisResponse.deregister_image",
    "moto.ec2.responses.amis:AmisResponse.describe_image_attribute",
    "moto.ec2.responses.amis:AmisResponse.modify_image_attribute",
    "moto.ec2.responses.elastic_block_store:ElasticBlockStore.describe_snapshots",
    "moto.ec2.responses.launch_templates:LaunchTemplates.describe_launch_template_versions",
    "moto.ec2.models.launch_templates:LaunchTemplateBackend.describe_launch_template_versions",
    "moto.ec2.models.tags:TagBackend.create_tags",
    "moto.ec2.utils:random_ami_id",
    "moto.ec2.utils:random_snapshot_id",
    "moto.core:DEFAULT_ACCOUNT_ID",
    "moto.moto_api._internal.urls:url_paths",
    "moto.moto_server.werkzeug_app:DomainDispatcherApplication.__call__",
    "moto.ec2.responses.instances:InstanceResponse.run_instances",
    "moto.ec2.responses.elastic_block_store:ElasticBlockStore.modify_snapshot_attribute",
    "moto.servicequotas.models:ServiceQuotasBackend.get_service_quota",
    "moto.core.exceptions:JsonRESTError",
    "moto.ec2.responses.general:General.get_console_output",
    "moto.ec2.utils:Base64EncodedString",
]

# Keyword arguments this module passes to moto's Ami constructor.
AMI_ARGS = [
    "name",
    "description",
    "owner_id",
    "architecture",
    "virtualization_type",
    "root_device_name",
    "root_device_type",
    "boot_mode",
    "image_location",
    "hypervisor",
    "state",
]

ARCHITECTURES = ("i386", "x86_64", "arm64", "x86_64_mac", "arm64_mac")
BOOT_MODES = ("legacy-bios", "uefi", "uefi-preferred")
VOLUME_TYPES = ("standard", "io1", "io2", "gp2", "sc1", "st1", "gp3")
# RegisterImage's documented name constraint.
NAME_RE = re.compile(r"[A-Za-z0-9()\[\] ./\-'@_]{3,128}")
# The error AWS answers when block public access stops a public share (seen in the wild:
# hortonworks/cloudbreak-images pull request 926 quotes it).
BPA_CODE = "OperationNotPermitted"
BPA_MESSAGE = (
    "You can't publicly share this image because block public access for AMIs is "
    "enabled for this account. To publicly share the image, you must call the "
    "DisableImageBlockPublicAccess API."
)

# Register and copy check, then create; requests run on several threads.
LOCK = threading.RLock()


class Moto:
    """The moto symbols in use, resolved once by `resolve`."""


def resolve():
    """Look up every symbol of REQUIRED; exit naming the missing ones."""
    import moto  # a missing moto must read as such: the launcher looks for this error

    missing = []
    for spec in REQUIRED:
        module, _, path = spec.partition(":")
        names = path.split(".")
        try:
            top = getattr(importlib.import_module(module), names[0])
            obj = top
            for name in names[1:]:
                obj = getattr(obj, name)
        except (ImportError, AttributeError):
            missing.append(spec)
            continue
        setattr(Moto, names[0], top)
    if not missing:
        params = inspect.signature(Moto.Ami.__init__).parameters
        missing += [
            f"moto.ec2.models.amis:Ami(..., {a}=)" for a in AMI_ARGS if a not in params
        ]
        if not isinstance(Moto.Ami.block_device_mappings, property):
            missing.append("moto.ec2.models.amis:Ami.block_device_mappings as a property")
        for mixin in (Moto.AmisResponse, Moto.ElasticBlockStore, Moto.LaunchTemplates):
            if not issubclass(Moto.EC2Response, mixin):
                missing.append(f"moto.ec2.responses:EC2Response built from {mixin.__name__}")
    if missing:
        sys.stderr.write(
            f"moto_ext: moto {getattr(moto, '__version__', '?')} lacks what this extension "
            f"patches or relies on (it was written for moto 5.2): {', '.join(missing)}. "
            "Update testkit/src/moto_ext.py for this moto.\n"
        )
        sys.exit(3)


# ---------------------------------------------------------------------------------------
# Helpers


def error(code, message):
    """An EC2 error answer (HTTP 400 with this code)."""
    return Moto.EC2ClientError(code, message)


def region_state(backend, key, default):
    """Per account+region state kept on moto's backend, so that a moto reset clears it."""
    return backend.__dict__.setdefault(f"_moto_ext_{key}", default)


def find_image(backend, image_id):
    """The live image `image_id` of this region, or InvalidAMIID.NotFound."""
    refresh(backend)
    images = backend.describe_images(ami_ids=[image_id])
    if not images:
        raise Moto.InvalidAMIIdError(image_id)
    return images[0]


def check_choice(parameter, value, allowed):
    if value is not None and value not in allowed:
        raise error(
            "InvalidParameterValue",
            f"Value ({value}) for parameter {parameter} is invalid. "
            f"Valid values: {', '.join(allowed)}.",
        )


def check_name(backend, name):
    """AWS's name constraint, and one name per account and region."""
    if name is None:
        raise error("MissingParameter", "The request must contain the parameter name")
    if not NAME_RE.fullmatch(name):
        raise error(
            "InvalidAMIName.Malformed",
            f"AMI names must be between 3 and 128 characters long, and may contain "
            f"letters, numbers, '(', ')', '.', '-', '/', '@', '_', ' ', '[', ']' and "
            f"single quotes: {name!r}",
        )
    for ami in backend.amis.values():
        if ami.name == name and ami.owner_id == backend.account_id:
            raise error(
                "InvalidAMIName.Duplicate",
                f"AMI name {name} is already in use by AMI {ami.id}",
            )


def tag_specs(specs, allowed):
    """The tags of TagSpecifications by resource type; other types are refused."""
    tags = {kind: {} for kind in allowed}
    for spec in specs or []:
        kind = spec.get("ResourceType")
        if kind not in allowed:
            raise error(
                "InvalidParameterValue",
                f"'{kind}' is not a valid taggable resource type for this operation.",
            )
        for tag in spec.get("Tags", []):
            tags[kind][tag["Key"]] = tag.get("Value", "")
    return tags


def user_tags(resource):
    """A resource's tags but the system ones (aws:...), which AWS never copies."""
    return {
        t["key"]: t["value"]
        for t in resource.get_tags()
        if not t["key"].startswith("aws:")
    }


def mappings_of(ami):
    """An image's block device mappings: ours as given, moto's own for other images."""
    ext = ami.__dict__.get("_moto_ext_mappings")
    return ext if ext is not None else ORIGINAL["block_device_mappings"](ami)


def mapped_snapshots(ami):
    return [
        m["Ebs"]["SnapshotId"]
        for m in mappings_of(ami)
        if m.get("Ebs", {}).get("SnapshotId")
    ]


def image_using(backend, snapshot_id):
    """The id of a live image of this region that maps `snapshot_id`, if any."""
    for ami in list(backend.amis.values()):
        if "_moto_ext_mappings" in ami.__dict__ and snapshot_id in mapped_snapshots(ami):
            return ami.id
    return None


def new_image(backend, image_id, mappings, attrs):
    """A moto Ami holding exactly `mappings` and the attributes ec2ami reads back."""
    ctor = {k: attrs.get(k) for k in AMI_ARGS if k in attrs}
    ctor.setdefault("owner_id", backend.account_id)
    ctor.setdefault("hypervisor", "xen")
    ctor.setdefault("state", "available")
    ami = Moto.Ami(backend, image_id, **ctor)
    # moto invents a 15 GiB snapshot for every image: AWS maps only what it was given.
    fake = getattr(ami, "ebs_snapshot", None)
    if fake is not None:
        backend.snapshots.pop(fake.id, None)
        ami.ebs_snapshot = None
    ami._moto_ext_mappings = mappings
    # Attributes moto lacks; its serializer reads them by the shape's snake_case names.
    for key in (
        "ena_support",
        "sriov_net_support",
        "imds_support",
        "tpm_support",
        "source_image_id",
        "source_image_region",
        "uefi_data",
    ):
        setattr(ami, key, attrs.get(key))
    ami.deprecation_time = None
    ami.deregistration_protection = None
    ami.last_launched_time = None
    ami.platform_details = "Linux/UNIX"
    ami.usage_operation = "RunInstances"
    backend.amis[image_id] = ami
    return ami


def first_zone(backend):
    zones = backend.describe_availability_zones()
    return zones[0].name if zones else f"{backend.region_name}a"


def new_snapshot(backend, size, description, encrypted, kms_key_id):
    """A completed snapshot of `size` GiB owned by the account (moto needs a volume)."""
    volume = backend.create_volume(
        size=size,
        zone_name=first_zone(backend),
        encrypted=bool(encrypted),
        kms_key_id=kms_key_id if encrypted else None,
    )
    snapshot = backend.create_snapshot(volume.id, description, owner_id=backend.account_id)
    snapshot.kms_key_id = volume.kms_key_id
    backend.delete_volume(volume.id)
    return snapshot


def parse_time(value):
    """A request timestamp (moto may hand over a datetime or the raw text) in UTC."""
    if isinstance(value, datetime.datetime):
        when = value
    else:
        text = str(value).strip().replace("Z", "+00:00")
        try:
            when = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise error("InvalidParameterValue", f"Invalid value for DeprecateAt: {value}")
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.astimezone(datetime.timezone.utc)


# ---------------------------------------------------------------------------------------
# RegisterImage


def parse_mapping(backend, given):
    """One RegisterImage block device mapping, checked against the region's snapshots."""
    mapping = {"DeviceName": given.get("DeviceName")}
    for key in ("VirtualName", "NoDevice"):
        if given.get(key) is not None:
            mapping[key] = given[key]
    ebs = given.get("Ebs")
    if not ebs:
        return mapping
    snapshot_id = ebs.get("SnapshotId")
    snapshot = None
    if snapshot_id:
        snapshot = backend.snapshots.get(snapshot_id)
        if snapshot is None:
            raise error(
                "InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id}' does not exist."
            )
    size = ebs.get("VolumeSize")
    if size is None and snapshot is not None:
        size = snapshot.volume_size
    if size is None:
        raise error(
            "InvalidBlockDeviceMapping",
            f"The device {mapping['DeviceName']} needs a snapshot or a volume size.",
        )
    if snapshot is not None and int(size) < int(snapshot.volume_size):
        raise error(
            "InvalidBlockDeviceMapping",
            f"Volume of size {size}GB is smaller than snapshot '{snapshot_id}', "
            f"expect size >= {snapshot.volume_size}GB",
        )
    volume_type = ebs.get("VolumeType", "gp2")
    check_choice("volumeType", volume_type, VOLUME_TYPES)
    out = {}
    if snapshot_id:
        out["SnapshotId"] = snapshot_id
    out["VolumeSize"] = int(size)
    out["VolumeType"] = volume_type
    out["DeleteOnTermination"] = bool(ebs.get("DeleteOnTermination", True))
    encrypted = ebs.get("Encrypted")
    if encrypted is None and snapshot is not None:
        encrypted = snapshot.encrypted
    out["Encrypted"] = bool(encrypted)
    for key in ("Iops", "Throughput", "KmsKeyId"):
        if ebs.get(key) is not None:
            out[key] = ebs[key]
    mapping["Ebs"] = out
    return mapping


def register_image(self):
    """RegisterImage that keeps what it is given and refuses what AWS refuses."""
    param = self._get_param
    name = param("Name")
    attrs = {
        "name": name,
        "description": param("Description"),
        "architecture": param("Architecture", "i386"),
        "virtualization_type": param("VirtualizationType", "paravirtual"),
        "root_device_name": param("RootDeviceName"),
        "boot_mode": param("BootMode"),
        "ena_support": param("EnaSupport"),
        "sriov_net_support": param("SriovNetSupport"),
        "imds_support": param("ImdsSupport"),
        "tpm_support": param("TpmSupport"),
        "uefi_data": param("UefiData"),
    }
    self.error_on_dryrun()
    check_uefi_data(attrs["uefi_data"], attrs["boot_mode"])
    check_choice("architecture", attrs["architecture"], ARCHITECTURES)
    check_choice("bootMode", attrs["boot_mode"], BOOT_MODES)
    check_choice("imdsSupport", attrs["imds_support"], ("v2.0",))
    check_choice("tpmSupport", attrs["tpm_support"], ("v2.0",))
    check_choice("sriovNetSupport", attrs["sriov_net_support"], ("simple",))
    tags = tag_specs(param("TagSpecifications", []), ("image",))["image"]
    backend = self.ec2_backend
    mappings = [parse_mapping(backend, m) for m in param("BlockDeviceMappings", [])]
    ebs_root = any(
        m["DeviceName"] == attrs["root_device_name"] and "Ebs" in m for m in mappings
    )
    attrs["root_device_type"] = "ebs" if ebs_root else "instance-store"
    attrs["image_location"] = f"{backend.account_id}/{name}"
    with LOCK:
        check_name(backend, name)
        ami = new_image(backend, Moto.random_ami_id(), mappings, attrs)
        if tags:
            ami.add_tags(tags)
    return Moto.ActionResult({"ImageId": ami.id})


# ---------------------------------------------------------------------------------------
# CopyImage


def copy_image(self):
    """CopyImage with AWS's attributes, snapshots, tags and ClientToken idempotency."""
    param = self._get_param
    source_id = param("SourceImageId")
    source_region = param("SourceRegion")
    name = param("Name")
    description = param("Description")
    token = param("ClientToken")
    copy_tags = bool(param("CopyImageTags", False))
    encrypted = bool(param("Encrypted", False))
    kms_key_id = param("KmsKeyId")
    tags = tag_specs(param("TagSpecifications", []), ("image", "snapshot"))
    completion = param("SnapshotCopyCompletionDurationMinutes")
    self.error_on_dryrun()
    check_completion(completion)
    dest = self.ec2_backend
    account_backends = Moto.ec2_backends[dest.account_id]
    if source_region not in account_backends:
        raise error("InvalidParameterValue", f"Invalid region: {source_region}")
    request = repr(
        (source_id, source_region, name, description, copy_tags, encrypted, kms_key_id, tags)
    )
    with LOCK:
        tokens = region_state(dest, "copy_tokens", {})
        if token and token in tokens:
            earlier, image_id = tokens[token]
            if earlier != request:
                raise error(
                    "IdempotentParameterMismatch",
                    f"The client token {token} was already used with other parameters.",
                )
            return Moto.ActionResult({"ImageId": image_id})
        source = account_backends[source_region].amis.get(source_id)
        if source is None:
            raise Moto.InvalidAMIIdError(source_id)
        name = name or source.name
        check_name(dest, name)
        image_id = Moto.random_ami_id()
        millis = int(time.time() * 1000)
        mappings = []
        for given in mappings_of(source):
            mapping = {k: v for k, v in given.items() if k != "Ebs"}
            ebs = dict(given.get("Ebs") or {})
            if ebs.get("SnapshotId"):
                snapshot = new_snapshot(
                    dest,
                    ebs["VolumeSize"],
                    f"Copied for DestinationAmi {image_id} from SourceAmi {source_id} "
                    f"for SourceSnapshot {ebs['SnapshotId']}. Task created on {millis:,}.",
                    encrypted or ebs.get("Encrypted"),
                    kms_key_id,
                )
                if tags["snapshot"]:
                    snapshot.add_tags(tags["snapshot"])
                ebs["SnapshotId"] = snapshot.id
                ebs["Encrypted"] = bool(snapshot.encrypted)
            if ebs:
                mapping["Ebs"] = ebs
            mappings.append(mapping)
        attrs = {
            key: getattr(source, key, None)
            for key in (
                "architecture",
                "virtualization_type",
                "root_device_name",
                "root_device_type",
                "boot_mode",
                "ena_support",
                "sriov_net_support",
                "imds_support",
                "tpm_support",
                "uefi_data",
            )
        }
        attrs.update(
            name=name,
            description=description if description is not None else source.description,
            image_location=f"{dest.account_id}/{name}",
            source_image_id=source_id,
            source_image_region=source_region,
        )
        ami = new_image(dest, image_id, mappings, attrs)
        ami._moto_ext_completion = completion
        pending = float(CONFIG["copy_pending_seconds"])
        if pending > 0:
            ami.state = "pending"
            ami._moto_ext_ready_at = time.time() + pending
        image_tags = user_tags(source) if copy_tags else {}
        image_tags.update(tags["image"])
        if image_tags:
            ami.add_tags(image_tags)
        if token:
            tokens[token] = (request, image_id)
    return Moto.ActionResult({"ImageId": image_id})


# ---------------------------------------------------------------------------------------
# Deprecation


def deprecation_time(value):
    """DeprecateAt as AWS keeps it: seconds rounded to the minute, in the future, at
    most 10 years ahead, formatted as DescribeImages answers it."""
    if value is None:
        raise error("MissingParameter", "The request must contain the parameter DeprecateAt")
    when = parse_time(value)
    rounded = when.replace(second=0, microsecond=0)
    if when - rounded >= datetime.timedelta(seconds=30):
        rounded += datetime.timedelta(minutes=1)
    now = datetime.datetime.now(datetime.timezone.utc)
    if rounded <= now:
        # AWS's documentation says the date can't be in the past without naming the
        # error code; InvalidParameterValue is its code for a bad value.
        raise error("InvalidParameterValue", f"DeprecateAt {when:%Y-%m-%dT%H:%M:%SZ} is in the past.")
    if rounded > now + datetime.timedelta(days=3653):
        raise error(
            "InvalidParameterValue",
            f"DeprecateAt {when:%Y-%m-%dT%H:%M:%SZ} is more than 10 years ahead.",
        )
    return rounded.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def enable_image_deprecation(self):
    """EnableImageDeprecation: remember the time for DescribeImages."""
    image_id = self._get_param("ImageId")
    when = deprecation_time(self._get_param("DeprecateAt"))
    self.error_on_dryrun()
    find_image(self.ec2_backend, image_id).deprecation_time = when
    return Moto.ActionResult({"Return": True})


def disable_image_deprecation(self):
    """DisableImageDeprecation: forget the time."""
    image_id = self._get_param("ImageId")
    self.error_on_dryrun()
    find_image(self.ec2_backend, image_id).deprecation_time = None
    return Moto.ActionResult({"Return": True})


# ---------------------------------------------------------------------------------------
# DeregisterImage and DeleteSnapshot


def deregister_image(self):
    """DeregisterImage that deletes the image's snapshots when asked to."""
    image_id = self._get_param("ImageId")
    delete_snapshots = bool(self._get_param("DeleteAssociatedSnapshots", False))
    self.error_on_dryrun()
    backend = self.ec2_backend
    ami = backend.amis.get(image_id)
    snapshots = mapped_snapshots(ami) if ami is not None else []
    if ami is not None and protected(ami):
        raise error(
            "OperationNotPermitted",
            f"The image {image_id} can't be deregistered because deregistration protection "
            f"is enabled ({protection_state(ami)}). Disable it first.",
        )
    days = retention(backend, "EC2_IMAGE", user_tags(ami)) if ami is not None else None
    backend.deregister_image(image_id)
    if days:
        to_bin(backend, "bin_images", ami, days)
    result = {"Return": True}
    if delete_snapshots and snapshots:
        result["DeleteSnapshotResults"] = [
            {"SnapshotId": s, "ReturnCode": delete_associated(backend, s)}
            for s in snapshots
        ]
    return Moto.ActionResult(result)


def delete_associated(backend, snapshot_id):
    """Delete one snapshot of a deregistered image: AWS's ReturnCode for it."""
    if image_using(backend, snapshot_id):
        return "skipped"
    try:
        backend.delete_snapshot(snapshot_id)
    except Moto.EC2ClientError:
        return "client-error"
    return "success"


def delete_snapshot(self, snapshot_id):
    """EBSBackend.delete_snapshot that also refuses snapshots our images map, and puts
    what a Recycle Bin rule covers in the bin."""
    user = image_using(self, snapshot_id)
    if user is not None:
        raise Moto.InvalidSnapshotInUse(snapshot_id, user)
    snapshot = self.snapshots.get(snapshot_id)
    done = ORIGINAL["delete_snapshot"](self, snapshot_id)
    if snapshot is not None:
        days = retention(self, "EBS_SNAPSHOT", user_tags(snapshot))
        if days:
            to_bin(self, "bin_snapshots", snapshot, days)
    return done


# ---------------------------------------------------------------------------------------
# DescribeImages filters and DescribeImageAttribute

# DescribeImages filter -> key inside a mapping's Ebs (None: the mapping itself).
MAPPING_FILTERS = {
    "block-device-mapping.snapshot-id": "SnapshotId",
    "block-device-mapping.volume-size": "VolumeSize",
    "block-device-mapping.volume-type": "VolumeType",
    "block-device-mapping.delete-on-termination": "DeleteOnTermination",
    "block-device-mapping.encrypted": "Encrypted",
    "block-device-mapping.device-name": None,
}

# DescribeImages filters on attributes that may be unset (moto answers 500 for None).
ATTRIBUTE_FILTERS = {
    "description": "description",
    "ena-support": "ena_support",
    "sriov-net-support": "sriov_net_support",
    "root-device-name": "root_device_name",
    "root-device-type": "root_device_type",
    "source-image-id": "source_image_id",
    "source-image-region": "source_image_region",
    "hypervisor": "hypervisor",
}


def as_filter_text(value):
    return str(value).lower() if isinstance(value, bool) else str(value)


def image_filter_value(self, filter_name, method_name=None):
    """Ami.get_filter_value with the mapping and attribute filters moto lacks."""
    if filter_name in MAPPING_FILTERS:
        key = MAPPING_FILTERS[filter_name]
        values = []
        for mapping in mappings_of(self):
            if key is None:
                value = mapping.get("DeviceName")
            else:
                value = mapping.get("Ebs", {}).get(key)
            if value is not None:
                values.append(as_filter_text(value))
        return values
    if filter_name in ATTRIBUTE_FILTERS:
        value = getattr(self, ATTRIBUTE_FILTERS[filter_name], None)
        return "" if value is None else as_filter_text(value)
    return ORIGINAL["get_filter_value"](self, filter_name, method_name)


# DescribeImageAttribute attribute -> (answer key, Ami attribute).
IMAGE_ATTRIBUTES = {
    "description": ("Description", "description"),
    "kernel": ("KernelId", "kernel_id"),
    "ramdisk": ("RamdiskId", "ramdisk_id"),
    "sriovNetSupport": ("SriovNetSupport", "sriov_net_support"),
    "bootMode": ("BootMode", "boot_mode"),
    "tpmSupport": ("TpmSupport", "tpm_support"),
    "uefiData": ("UefiData", "uefi_data"),
    "imdsSupport": ("ImdsSupport", "imds_support"),
    "lastLaunchedTime": ("LastLaunchedTime", "last_launched_time"),
    "deregistrationProtection": ("DeregistrationProtection", "deregistration_protection"),
}


def describe_image_attribute(self):
    """DescribeImageAttribute answering each attribute from the image's state."""
    attribute = self._get_param("Attribute")
    image_id = self._get_param("ImageId")
    if attribute not in IMAGE_ATTRIBUTES and attribute != "launchPermission":
        # moto's own answers: AuthFailure for blockDeviceMapping as AWS, and so on.
        return ORIGINAL["describe_image_attribute"](self)
    self.error_on_dryrun()
    ami = find_image(self.ec2_backend, image_id)
    result = {"ImageId": ami.id}
    if attribute == "launchPermission":
        result["LaunchPermissions"] = list(ami.launch_permissions)
    else:
        key, name = IMAGE_ATTRIBUTES[attribute]
        value = getattr(ami, name, None)
        if attribute == "sriovNetSupport" and "_moto_ext_mappings" not in ami.__dict__:
            value = getattr(ami, "sriov", None)
        result[key] = {} if value is None else {"Value": value}
    return Moto.ActionResult(result)


# ---------------------------------------------------------------------------------------
# Image block public access


def bpa_state(backend):
    return region_state(backend, "image_bpa", {"state": "unblocked", "pending": None})


def bpa_effective(backend):
    """The region's state as it is in force: a change takes effect MOTO_EXT_BPA_DELAY
    seconds after it was asked for (AWS: up to 10 minutes), the old state until then."""
    s = bpa_state(backend)
    pending = s.get("pending")
    if pending and time.monotonic() >= pending[1]:
        s["state"], s["pending"] = pending[0], None
    return s["state"]


def bpa_change(backend, target):
    """Ask for `target`; in force at once, or after the realism delay."""
    s = bpa_state(backend)
    delay = REALISM.get("bpa_delay", 0.0)
    if delay > 0:
        s["pending"] = (target, time.monotonic() + delay)
    else:
        s["state"], s["pending"] = target, None


def bpa_in_force(request, full_url, headers):
    """POST /moto-api/ec2ami/bpa-in-force: every pending image block public access
    change takes effect now (what AWS shows once its "up to 10 minutes" have passed), so
    a test moves on when it says, not when a clock says. Answers {"applied": how many}."""
    applied = 0
    for account in list(Moto.ec2_backends.values()):
        for backend in list(account.values()):
            s = backend.__dict__.get("_moto_ext_image_bpa")
            if s and s.get("pending"):
                s["state"], s["pending"] = s["pending"][0], None
                applied += 1
    return 200, {"Content-Type": "application/json"}, json.dumps({"applied": applied})


def get_image_block_public_access_state(self):
    """GetImageBlockPublicAccessState: the region's state, unblocked by default."""
    self.error_on_dryrun()
    return Moto.ActionResult(
        {
            "ImageBlockPublicAccessState": bpa_effective(self.ec2_backend),
            "ManagedBy": "account",
        }
    )


def enable_image_block_public_access(self):
    """EnableImageBlockPublicAccess: block new public sharing in this region."""
    state = self._get_param("ImageBlockPublicAccessState")
    self.error_on_dryrun()
    check_choice("ImageBlockPublicAccessState", state, ("block-new-sharing",))
    if state is None:
        raise error(
            "MissingParameter",
            "The request must contain the parameter ImageBlockPublicAccessState",
        )
    bpa_change(self.ec2_backend, state)
    return Moto.ActionResult({"ImageBlockPublicAccessState": state})


def disable_image_block_public_access(self):
    """DisableImageBlockPublicAccess (AWS takes up to 10 minutes; here at once, or after
    the realism delay)."""
    self.error_on_dryrun()
    bpa_change(self.ec2_backend, "unblocked")
    return Moto.ActionResult({"ImageBlockPublicAccessState": "unblocked"})


def modify_image_attribute(self):
    """ModifyImageAttribute that refuses a public share while block public access is on."""
    adds = (self._get_param("LaunchPermission") or {}).get("Add") or []
    public = any(p.get("Group") == "all" for p in adds) or (
        self._get_param("OperationType") == "add"
        and "all" in (self._get_param("UserGroups") or [])
    )
    if public and bpa_effective(self.ec2_backend) == "block-new-sharing":
        find_image(self.ec2_backend, self._get_param("ImageId"))
        raise error(BPA_CODE, BPA_MESSAGE)
    image_id = self._get_param("ImageId")
    ami = self.ec2_backend.amis.get(image_id)
    if ami is not None and ami.state == "disabled" and adds:
        raise error(
            "OperationNotPermitted",
            f"The image {image_id} is disabled: a disabled AMI can't be shared. Enable it first.",
        )
    return ORIGINAL["modify_image_attribute"](self)


# ---------------------------------------------------------------------------------------
# DescribeSnapshots


def describe_snapshots(self):
    """DescribeSnapshots that honours OwnerIds (self = the caller's account) and pages."""
    owners = self._get_param("OwnerIds") or []
    snapshots = self.ec2_backend.describe_snapshots(
        snapshot_ids=self._get_param("SnapshotIds", []),
        filters=self._filters_from_querystring(),
    )
    if owners:
        wanted = {self.current_account if o == "self" else o for o in owners}
        snapshots = [s for s in snapshots if s.owner_id in wanted]
    return paged(self, "Snapshots", snapshots, DESCRIBE_LIMITS)


# ---------------------------------------------------------------------------------------
# Pagination

# Harness-only: the largest page any paginated answer has (0: no cap).
PAGE_CAP = int(os.environ.get("MOTO_EXT_PAGE_SIZE") or 0)
# MaxResults ranges AWS accepts.
DESCRIBE_LIMITS = (5, 1000)
LAUNCH_TEMPLATE_LIMITS = (1, 200)
TOKEN_PREFIX = "moto-ext-page-"


def paged(self, key, items, limits):
    """The page of `items` a request asks for, as AWS answers it: at most MaxResults
    (checked against AWS's range) and the harness's cap, with a NextToken while items
    remain."""
    low, high = limits
    max_results = self._get_param("MaxResults")
    if max_results is not None:
        max_results = int(max_results)
        if not low <= max_results <= high:
            raise error(
                "InvalidParameterValue",
                f"Value ( {max_results} ) for parameter maxResults is invalid. "
                f"Expecting a value between {low} and {high}.",
            )
    token = self._get_param("NextToken")
    start = 0
    if token:
        offset = token[len(TOKEN_PREFIX):] if token.startswith(TOKEN_PREFIX) else ""
        if not offset.isdigit():
            raise error("InvalidParameterValue", f"Invalid value for NextToken: {token}")
        start = int(offset)
    sizes = [n for n in (max_results, PAGE_CAP) if n]
    end = min(len(items), start + min(sizes)) if sizes else len(items)
    result = {key: list(items[start:end])}
    if end < len(items):
        result["NextToken"] = f"{TOKEN_PREFIX}{end}"
    return Moto.ActionResult(result)


def describe_images(self):
    """DescribeImages answered in pages; disabled images only with IncludeDisabled."""
    refresh(self.ec2_backend)
    images = ORIGINAL["describe_images"](self).result["Images"]
    if str(self._get_param("IncludeDisabled", False)).lower() != "true":
        images = [i for i in images if i.state != "disabled"]
    return paged(self, "Images", images, DESCRIBE_LIMITS)


def describe_launch_template_versions(self):
    """DescribeLaunchTemplateVersions answered in pages (moto cuts at 15, no token)."""
    self.error_on_dryrun()
    found = self.ec2_backend.describe_launch_template_versions(
        template_name=self._get_param("LaunchTemplateName"),
        template_id=self._get_param("LaunchTemplateId"),
        versions=self._get_param("Versions", []),
        min_version=self._get_int_param("MinVersion"),
        max_version=self._get_int_param("MaxVersion"),
        max_results=sys.maxsize,
    )
    versions = [
        {
            "CreateTime": version.create_time,
            "CreatedBy": f"arn:aws:iam::{self.current_account}:root",
            "DefaultVersion": template.is_default(version),
            "LaunchTemplateData": version.data,
            "LaunchTemplateId": template.id,
            "LaunchTemplateName": template.name,
            "VersionDescription": version.description,
            "VersionNumber": version.number,
        }
        for template, version in found
    ]
    return paged(self, "LaunchTemplateVersions", versions, LAUNCH_TEMPLATE_LIMITS)


# ---------------------------------------------------------------------------------------
# Harness-only: backdated resources and bulk generation

CREATED_AT_TAG = "moto-ext:created-at"


def create_tags(self, resource_ids, tags):
    """TagBackend.create_tags that backdates images and snapshots tagged CREATED_AT_TAG."""
    done = ORIGINAL["create_tags"](self, resource_ids, tags)
    if CREATED_AT_TAG in tags:
        when = naive_utc(tags[CREATED_AT_TAG])
        for resource_id in resource_ids:
            if resource_id in self.amis:
                self.amis[resource_id].creation_date = when
            elif resource_id in self.snapshots:
                self.snapshots[resource_id].start_time = when
    return done


def naive_utc(text):
    """An RFC 3339 time as moto keeps its own times (naive, UTC)."""
    return parse_time(text).replace(tzinfo=None)


def generate(request, full_url, headers):
    """POST /moto-api/ec2ami/generate: make images and snapshots in moto's model at once.

    Body: {"images": [{"region", "name", "created", "tags", "pending_seconds",
    "snapshots": [{"size", "description", "created", "tags"}]}], "snapshots": [{"region", "size",
    "description", "created", "tags"}]}. Answers {"images": [ids], "snapshots": [ids]}
    in the same order. Each image maps its snapshots as /dev/sda1, /dev/sdb...
    """
    if request.method != "POST":
        return 405, {}, json.dumps({"error": "POST a JSON document"})
    body = request.get_data() if hasattr(request, "get_data") else request.body
    spec = json.loads(body or b"{}")
    backends = Moto.ec2_backends[spec.get("account", Moto.DEFAULT_ACCOUNT_ID)]
    out = {"images": [], "snapshots": []}

    def snapshot(backend, s):
        snap = new_snapshot(backend, int(s.get("size", 8)), s.get("description", ""), False, None)
        if s.get("created"):
            snap.start_time = naive_utc(s["created"])
        if s.get("tags"):
            snap.add_tags(s["tags"])
        return snap

    with LOCK:
        for s in spec.get("snapshots", []):
            out["snapshots"].append(snapshot(backends[s["region"]], s).id)
        for i in spec.get("images", []):
            backend = backends[i["region"]]
            mappings = []
            for n, s in enumerate(i.get("snapshots", [])):
                snap = snapshot(backend, s)
                device = "/dev/sda1" if n == 0 else f"/dev/sd{chr(ord('a') + n)}"
                mappings.append(
                    {
                        "DeviceName": device,
                        "Ebs": {
                            "SnapshotId": snap.id,
                            "VolumeSize": snap.volume_size,
                            "VolumeType": "gp3",
                            "DeleteOnTermination": True,
                            "Encrypted": False,
                        },
                    }
                )
            attrs = {
                "name": i["name"],
                "description": i.get("description"),
                "architecture": i.get("architecture", "x86_64"),
                "virtualization_type": "hvm",
                "root_device_name": "/dev/sda1",
                "root_device_type": "ebs",
                "boot_mode": i.get("boot_mode", "uefi-preferred"),
                "image_location": f"{backend.account_id}/{i['name']}",
            }
            ami = new_image(backend, Moto.random_ami_id(), mappings, attrs)
            if i.get("pending_seconds"):
                # Pending like a copy in progress, available that many seconds from now.
                ami.state = "pending"
                ami._moto_ext_ready_at = time.time() + float(i["pending_seconds"])
            if i.get("created"):
                ami.creation_date = naive_utc(i["created"])
            if i.get("tags"):
                ami.add_tags(i["tags"])
            out["images"].append(ami.id)
    return 200, {"Content-Type": "application/json"}, json.dumps(out)


# ---------------------------------------------------------------------------------------
# Imports (the legacy S3 upload path): ImportVolume, ImportSnapshot and their tasks
#
# moto answers ImportVolume with "not yet implemented" and has no ImportSnapshot,
# DescribeConversionTasks, DescribeImportSnapshotTasks, CancelConversionTask or
# CancelImportTask. Here an import reads what AWS reads: ImportVolume the manifest at
# Image.ImportManifestUrl and every part at its <get-url>, ImportSnapshot the object of
# DiskContainer.UserBucket (or Url), both from moto's S3 by the bucket and key in the
# URL (which must be pre-signed and unexpired: AWS fetches them as they are). What is
# read is checked as AWS checks it (manifest version, format, sizes, contiguous byte
# ranges, the disk's header for VMDK/VHD), VMDK and VHD are converted to raw blocks
# with qemu-img as AWS converts them, and the blocks are kept: ImportVolume's volume
# holds them and CreateSnapshot of that volume puts them in moto's EBS direct store
# (512 KiB blocks, zero blocks left out), as does ImportSnapshot's snapshot, so that a
# test reads back with GetSnapshotBlock exactly what was imported. A task is "active"
# for IMPORT_ACTIVE_POLLS describes, then completed; a bad manifest or disk cancels
# (ImportVolume) or deletes (ImportSnapshot) the task with a "ClientError: ..." status
# message, as AWS does.
#
# Harness-only, never AWS: POST /moto-api/ec2ami/import-faults with JSON
# {"resource_limit": N, "server_error": N} makes the next N ImportVolume/ImportSnapshot
# calls answer ResourceLimitExceeded (AWS's answer while too many imports run), and
# the next N tasks stay "active" forever with a SERVER_ERROR status message (the state
# that hangs real imports).

IMPORT_REQUIRED = [
    "moto.ebs.models:ebs_backends",
    "moto.ebs.models:EBSSnapshot",
    "moto.ebs.models:Block",
    "moto.s3.models:s3_backends",
    "moto.ec2.models.elastic_block_store:EBSBackend.get_volume",
    "moto.ec2.responses.elastic_block_store:ElasticBlockStore.import_volume",
    "moto.s3.responses:S3Response.serialized",
]
IMPORT_ACTIVE_POLLS = 1
EBS_BLOCK = 512 * 1024
GIB = 1 << 30
IMPORT_FAULTS = {"resource_limit": 0, "server_error": 0}


class ImportSyms:
    """moto symbols the import section uses (filled by install_imports)."""


def resolve_imports():
    missing = []
    for spec in IMPORT_REQUIRED:
        module, _, path = spec.partition(":")
        names = path.split(".")
        try:
            obj = getattr(importlib.import_module(module), names[0])
            for name in names[1:]:
                getattr(obj, name)
            setattr(ImportSyms, names[0], obj)
        except (ImportError, AttributeError):
            missing.append(spec)
    if missing:
        sys.stderr.write(
            f"moto_ext: this moto lacks what the import section relies on: {', '.join(missing)}\n"
        )
        sys.exit(3)


class ImportFailed(Exception):
    """What AWS would put in a failed task's status message."""


def presigned_object(url, what):
    """(bucket, key) of a pre-signed, unexpired S3 URL (path or virtual-host style)."""
    import urllib.parse

    u = urllib.parse.urlsplit(url or "")
    q = dict(urllib.parse.parse_qsl(u.query))
    for p in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
              "X-Amz-Signature"):
        if p not in q:
            raise ImportFailed(f"ClientError: the {what} URL is not a pre-signed S3 URL ({p} missing)")
    signed = datetime.datetime.strptime(q["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=datetime.timezone.utc
    )
    expires = signed + datetime.timedelta(seconds=int(q["X-Amz-Expires"]))
    if expires < datetime.datetime.now(datetime.timezone.utc):
        raise ImportFailed(f"ClientError: the {what} URL expired at {expires.isoformat()}")
    path = urllib.parse.unquote(u.path)
    host = u.hostname or ""
    if ".s3." in host or host.endswith(".s3.amazonaws.com"):
        return host.split(".s3")[0], path.lstrip("/")
    bucket, _, key = path.lstrip("/").partition("/")
    return bucket, key


def s3_read(account_id, bucket, key, what):
    backend = ImportSyms.s3_backends[account_id]["aws"]
    try:
        obj = backend.get_object(bucket, key)
    except Exception:  # moto raises MissingBucket for an unknown bucket
        obj = None
    if obj is None:
        raise ImportFailed(f"ClientError: cannot read the {what} s3://{bucket}/{key}")
    return obj.value


def check_disk(fmt, data):
    """AWS's disk validation: the header of the format named."""
    if fmt == "VMDK" and not data.startswith(b"KDMV"):
        raise ImportFailed("ClientError: Disk validation failed [Unsupported VMDK File Format]")
    if fmt == "VHD" and not (data[-512:].startswith(b"conectix") or data.startswith(b"conectix")):
        raise ImportFailed("ClientError: Disk validation failed [Unsupported VHD File Format]")


def to_raw(fmt, data):
    """The disk's raw blocks: VMDK and VHD converted with qemu-img, as AWS converts."""
    if fmt == "RAW":
        return data
    import shutil
    import subprocess
    import tempfile

    qemu = shutil.which("qemu-img")
    if qemu is None:
        raise ImportFailed(
            f"ServerError: the test world needs qemu-img to convert {fmt} "
            "(apt-get install qemu-utils)"
        )
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "in"), os.path.join(d, "out.raw")
        with open(src, "wb") as f:
            f.write(data)
        r = subprocess.run(
            [qemu, "convert", "-q", "-f", {"VMDK": "vmdk", "VHD": "vpc"}[fmt], "-O", "raw", src, dst],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise ImportFailed(f"ClientError: Disk validation failed [{r.stderr.strip()}]")
        with open(dst, "rb") as f:
            return f.read()


def store_blocks(account_id, region, snapshot, data):
    """Put `data` into moto's EBS direct store as `snapshot`'s blocks (completed)."""
    import base64
    import hashlib

    ebs = ImportSyms.ebs_backends[account_id][region]
    es = ImportSyms.EBSSnapshot(account_id=account_id, snapshot=snapshot)
    es.status = "completed"
    zero = bytes(EBS_BLOCK)
    for i in range(0, len(data), EBS_BLOCK):
        chunk = data[i : i + EBS_BLOCK].ljust(EBS_BLOCK, b"\0")
        if chunk == zero:
            continue
        digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
        es.blocks[str(i // EBS_BLOCK)] = ImportSyms.Block(chunk, digest, "SHA256", str(EBS_BLOCK))
    ebs.snapshots[snapshot.id] = es


def create_snapshot_with_data(self, volume_id, description, owner_id=None, from_ami=None):
    """CreateSnapshot; of an imported volume, the snapshot holds the volume's blocks."""
    snapshot = ORIGINAL["create_snapshot"](self, volume_id, description, owner_id, from_ami)
    data = getattr(self.get_volume(volume_id), "_moto_ext_data", None)
    if data is not None:
        store_blocks(self.account_id, self.region_name, snapshot, data)
    return snapshot


def import_fault(kind):
    with LOCK:
        if IMPORT_FAULTS[kind] > 0:
            IMPORT_FAULTS[kind] -= 1
            return True
    return False


def import_limit():
    if import_fault("resource_limit"):
        raise error(
            "ResourceLimitExceeded",
            "You have reached the limit for concurrent import tasks; wait for one to finish",
        )


def read_manifest(account_id, image):
    """The disk ImportVolume's manifest describes, read part by part; (format, data)."""
    import xml.etree.ElementTree as ET

    fmt = image.get("Format")
    size = int(image.get("Bytes") or 0)
    bucket, key = presigned_object(image.get("ImportManifestUrl"), "manifest")
    try:
        root = ET.fromstring(s3_read(account_id, bucket, key, "manifest"))
    except ET.ParseError as e:
        raise ImportFailed(f"ClientError: the manifest is not XML: {e}")
    text = lambda path: (root.findtext(path) or "").strip()  # noqa: E731
    if root.tag != "manifest" or text("version") != "2010-11-15":
        raise ImportFailed("ClientError: not an import manifest of version 2010-11-15")
    if text("file-format") != fmt:
        raise ImportFailed(
            f"ClientError: the manifest's file-format {text('file-format')} is not {fmt}"
        )
    presigned_object(text("self-destruct-url"), "self-destruct")
    if int(text("import/size") or -1) != size:
        raise ImportFailed(f"ClientError: the manifest's size is not Image.Bytes ({size})")
    parts = root.find("import/parts")
    items = parts.findall("part") if parts is not None else []
    if parts is None or int(parts.get("count", -1)) != len(items) or not items:
        raise ImportFailed("ClientError: the manifest's parts count does not match its parts")
    data = bytearray()
    for n, p in enumerate(items):
        r = p.find("byte-range")
        if int(p.get("index", -1)) != n or r is None:
            raise ImportFailed(f"ClientError: part {n} is out of order or has no byte-range")
        start, end = int(r.get("start")), int(r.get("end"))
        if start != len(data) or end < start:
            raise ImportFailed(f"ClientError: part {n}'s byte range {start}-{end} leaves a gap")
        for tag in ("key", "head-url", "delete-url"):
            if not p.findtext(tag):
                raise ImportFailed(f"ClientError: part {n} has no <{tag}>")
        b, k = presigned_object(p.findtext("get-url"), f"part {n}")
        chunk = s3_read(account_id, b, k, f"part {n}")
        if len(chunk) != end - start + 1:
            raise ImportFailed(
                f"ClientError: part {n} holds {len(chunk)} bytes, its byte range {end - start + 1}"
            )
        data += chunk
    if len(data) != size:
        raise ImportFailed(f"ClientError: the parts hold {len(data)} bytes, not {size}")
    return fmt, bytes(data)


def conversion_answer(t):
    task = {
        "ConversionTaskId": t["id"],
        "ExpirationTime": t["expires"],
        "State": t["state"],
        "StatusMessage": t["message"],
        "ImportVolume": {
            "AvailabilityZone": t["zone"],
            "BytesConverted": t["converted"],
            "Description": t["description"],
            "Image": {"Format": t["format"], "ImportManifestUrl": t["url"], "Size": t["size"]},
            "Volume": {"Size": t["volume_size"]},
        },
    }
    if t.get("volume_id"):
        task["ImportVolume"]["Volume"]["Id"] = t["volume_id"]
    return task


def import_volume(self):
    """ImportVolume: a conversion task that reads the manifest's parts from S3."""
    param = self._get_param
    image, volume = param("Image") or {}, param("Volume") or {}
    zone = param("AvailabilityZone")
    self.error_on_dryrun()
    for name, value in (
        ("AvailabilityZone", zone),
        ("Image.Format", image.get("Format")),
        ("Image.Bytes", image.get("Bytes")),
        ("Image.ImportManifestUrl", image.get("ImportManifestUrl")),
        ("Volume.Size", volume.get("Size")),
    ):
        if value in (None, ""):
            raise error("MissingParameter", f"The request must contain the parameter {name}")
    check_choice("Image.Format", image["Format"], ("RAW", "VHD", "VMDK"))
    backend = self.ec2_backend
    zones = [z.name for z in backend.describe_availability_zones()]
    if zone not in zones:
        raise error("InvalidZone.NotFound", f"The zone '{zone}' does not exist.")
    size, volume_size = int(image["Bytes"]), int(volume["Size"])
    if volume_size * GIB < size:
        raise error(
            "InvalidParameter",
            f"Volume.Size {volume_size} GiB is smaller than the image ({size} bytes)",
        )
    import_limit()
    now = datetime.datetime.now(datetime.timezone.utc)
    t = {
        "id": "import-vol-" + os.urandom(4).hex(),
        "expires": (now + datetime.timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "state": "active",
        "message": "Pending",
        "zone": zone,
        "converted": 0,
        "description": param("Description") or "",
        "format": image["Format"],
        "url": image["ImportManifestUrl"],
        "size": size,
        "volume_size": volume_size,
        "polls": 0,
        "hang": import_fault("server_error"),
    }
    if not t["hang"]:
        try:
            fmt, data = read_manifest(backend.account_id, image)
            raw = to_raw(fmt, data)
            if len(raw) > volume_size * GIB:
                raise ImportFailed("ClientError: the disk is larger than Volume.Size")
            vol = backend.create_volume(size=volume_size, zone_name=zone)
            vol._moto_ext_data = raw
            t["ready_volume"] = vol.id
            t["converted"] = size
        except ImportFailed as e:
            t["fail"] = str(e)
    with LOCK:
        region_state(backend, "conversion_tasks", {})[t["id"]] = t
    return Moto.ActionResult({"ConversionTask": conversion_answer(t)})


def advance(t, done):
    """One describe of task `t`: active for IMPORT_ACTIVE_POLLS describes, then `done`."""
    if t["hang"]:
        t["message"] = "ServerError: SERVER_ERROR"
        return
    t["polls"] += 1
    if t["polls"] > IMPORT_ACTIVE_POLLS and t["state"] == "active":
        done(t)


def describe_conversion_tasks(self):
    ids = self._get_param("ConversionTaskIds") or []
    tasks = region_state(self.ec2_backend, "conversion_tasks", {})

    def done(t):
        if "fail" in t:
            t["state"], t["message"] = "cancelled", t["fail"]
        else:
            t["state"], t["message"] = "completed", ""
            t["volume_id"] = t["ready_volume"]

    out = []
    with LOCK:
        for i in ids or list(tasks):
            if i not in tasks:
                raise error("InvalidConversionTaskId", f"The conversion task ID '{i}' does not exist")
            advance(tasks[i], done)
            out.append(conversion_answer(tasks[i]))
    return Moto.ActionResult({"ConversionTasks": out})


def cancel_conversion_task(self):
    i = self._get_param("ConversionTaskId")
    tasks = region_state(self.ec2_backend, "conversion_tasks", {})
    with LOCK:
        t = tasks.get(i)
        if t is None:
            raise error("InvalidConversionTaskId", f"The conversion task ID '{i}' does not exist")
        if t["state"] == "active":
            t["state"], t["message"] = "cancelled", "cancelled by the user"
            if t.get("ready_volume"):
                self.ec2_backend.delete_volume(t.pop("ready_volume"))
    return Moto.ActionResult({})


def import_task_answer(t):
    detail = {
        "Description": t["description"],
        "DiskImageSize": float(t["size"]),
        "Format": t["format"],
        "Status": t["status"],
        "StatusMessage": t["message"],
        "UserBucket": {"S3Bucket": t["bucket"], "S3Key": t["key"]},
    }
    if t.get("snapshot_id"):
        detail["SnapshotId"] = t["snapshot_id"]
    if t["status"] == "active":
        detail["Progress"] = "10"
    return {"Description": t["description"], "ImportTaskId": t["id"], "SnapshotTaskDetail": detail}


def import_snapshot(self):
    """ImportSnapshot: reads the S3 object, converts it, makes a snapshot of it."""
    param = self._get_param
    disk = param("DiskContainer") or {}
    self.error_on_dryrun()
    fmt = (disk.get("Format") or "").upper()
    check_choice("DiskContainer.Format", fmt, ("RAW", "VHD", "VMDK"))
    user = disk.get("UserBucket") or {}
    bucket, key = user.get("S3Bucket"), user.get("S3Key")
    url = disk.get("Url")
    if not (bucket and key) and url and url.startswith("s3://"):
        bucket, _, key = url[5:].partition("/")
    if not (bucket and key):
        raise error("MissingParameter", "DiskContainer needs UserBucket (S3Bucket, S3Key) or Url")
    backend = self.ec2_backend
    token = param("ClientToken")
    tasks = region_state(backend, "import_snapshot_tasks", {})
    with LOCK:
        for t in tasks.values():
            if token and t.get("token") == token:
                return Moto.ActionResult(import_task_answer(t))
    import_limit()
    t = {
        "id": "import-snap-" + os.urandom(4).hex(),
        "token": token,
        "description": param("Description") or "",
        "format": fmt,
        "status": "active",
        "message": "pending",
        "bucket": bucket,
        "key": key,
        "size": 0,
        "polls": 0,
        "hang": import_fault("server_error"),
    }
    if not t["hang"]:
        try:
            data = s3_read(backend.account_id, bucket, key, "disk image")
            t["size"] = len(data)
            check_disk(fmt, data)
            raw = to_raw(fmt, data)
            gib = max(1, -(-len(raw) // GIB))
            snap = new_snapshot(backend, gib, t["description"], False, None)
            store_blocks(backend.account_id, backend.region_name, snap, raw)
            t["ready_snapshot"] = snap.id
        except ImportFailed as e:
            t["fail"] = str(e)
    with LOCK:
        tasks[t["id"]] = t
    return Moto.ActionResult(import_task_answer(t))


def describe_import_snapshot_tasks(self):
    ids = self._get_param("ImportTaskIds") or []
    tasks = region_state(self.ec2_backend, "import_snapshot_tasks", {})

    def done(t):
        if "fail" in t:
            t["status"], t["message"] = "deleted", t["fail"]
        else:
            t["status"], t["message"] = "completed", ""
            t["snapshot_id"] = t["ready_snapshot"]

    out = []
    with LOCK:
        for i in ids or list(tasks):
            if i not in tasks:
                raise error("InvalidConversionTaskId.Malformed", f"The import task '{i}' does not exist")
            t = tasks[i]
            if t["hang"]:
                t["message"] = "ServerError: SERVER_ERROR"
            else:
                t["polls"] += 1
                if t["polls"] > IMPORT_ACTIVE_POLLS and t["status"] == "active":
                    done(t)
            out.append(import_task_answer(t))
    return Moto.ActionResult({"ImportSnapshotTasks": out})


def cancel_import_task(self):
    i = self._get_param("ImportTaskId")
    tasks = region_state(self.ec2_backend, "import_snapshot_tasks", {})
    with LOCK:
        t = tasks.get(i)
        if t is None:
            raise error("InvalidConversionTaskId", f"The import task '{i}' does not exist")
        previous = t["status"]
        if previous == "active":
            t["status"], t["message"] = "deleted", "cancelled by the user"
            if t.get("ready_snapshot"):
                self.ec2_backend.delete_snapshot(t.pop("ready_snapshot"))
    return Moto.ActionResult(
        {"ImportTaskId": i, "PreviousState": previous, "State": t["status"]}
    )


def import_faults(request, full_url, headers):
    """POST /moto-api/ec2ami/import-faults (harness-only): see the section's comment."""
    if request.method != "POST":
        return 405, {}, json.dumps({"error": "POST a JSON document"})
    body = request.get_data() if hasattr(request, "get_data") else request.body
    spec = json.loads(body or b"{}")
    with LOCK:
        for k in IMPORT_FAULTS:
            IMPORT_FAULTS[k] = int(spec.get(k, 0))
    return 200, {"Content-Type": "application/json"}, json.dumps(IMPORT_FAULTS)


def s3_serialized(self, action_result):
    """moto names CompleteMultipartUpload's answer <CompleteMultipartUploadResponse>;
    S3 (and the SDKs, strictly) use <CompleteMultipartUploadResult>."""
    status, headers, body = ORIGINAL["s3_serialized"](self, action_result)
    if self.data.get("Action") == "CompleteMultipartUpload" and isinstance(body, (str, bytes)):
        old, new = "CompleteMultipartUploadResponse", "CompleteMultipartUploadResult"
        body = body.replace(old, new) if isinstance(body, str) else body.replace(
            old.encode(), new.encode()
        )
        headers.pop("Content-Length", None)
        headers.pop("content-length", None)
    return status, headers, body


def install_imports():
    """Check moto for the import section, then patch it."""
    resolve_imports()
    from moto.s3.responses import S3Response

    ORIGINAL["s3_serialized"] = S3Response.serialized
    S3Response.serialized = s3_serialized
    ORIGINAL["create_snapshot"] = Moto.EBSBackend.create_snapshot
    Moto.EBSBackend.create_snapshot = create_snapshot_with_data
    for handler in (
        import_volume,
        describe_conversion_tasks,
        cancel_conversion_task,
        import_snapshot,
        describe_import_snapshot_tasks,
        cancel_import_task,
    ):
        setattr(Moto.EC2Response, handler.__name__, handler)
    Moto.url_paths["{0}/moto-api/ec2ami/import-faults"] = import_faults


# Harness-only knobs (POST /moto-api/ec2ami/config): AWS's slow clock, run fast

CONFIG = {
    # How long disabling a protection enabled WithCooldown keeps the image protected.
    "cooldown_seconds": 86400,
    # How long every new copy stays pending (0: available at once, as moto has it).
    "copy_pending_seconds": 0,
    # The Public AMIs quota Service Quotas answers: a number, or {region: number}.
    "public_ami_quota": 5,
    # Service Quotas answers AccessDeniedException.
    "service_quotas_denied": False,
    # GetConsoleOutput / GetConsoleScreenshot: {instance id or "*": {"text": ...} or
    # {"file": path}} (a file is read at each request: a locally booted guest's live
    # console log). Without an entry moto's sample console is answered.
    "console_output": {},
}


def config(request, full_url, headers):
    """POST /moto-api/ec2ami/config: set harness knobs (JSON object); answers them all."""
    if request.method == "POST":
        body = request.get_data() if hasattr(request, "get_data") else request.body
        given = json.loads(body or b"{}")
        unknown = [k for k in given if k not in CONFIG]
        if unknown:
            return 400, {}, json.dumps({"error": f"unknown knobs: {unknown}"})
        CONFIG.update(given)
    return 200, {"Content-Type": "application/json"}, json.dumps(CONFIG)


def set_last_launched(request, full_url, headers):
    """POST /moto-api/ec2ami/last-launched: {"region", "image_id", "time"} sets the
    image's LastLaunchedTime, as AWS reports a launch (up to 24 hours late)."""
    body = request.get_data() if hasattr(request, "get_data") else request.body
    spec = json.loads(body or b"{}")
    backend = Moto.ec2_backends[spec.get("account", Moto.DEFAULT_ACCOUNT_ID)][spec["region"]]
    ami = backend.amis.get(spec["image_id"])
    if ami is None:
        return 404, {}, json.dumps({"error": f"no image {spec['image_id']}"})
    ami.last_launched_time = naive_utc(spec["time"]).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return 200, {"Content-Type": "application/json"}, json.dumps({"ok": True})


def copies_ready(request, full_url, headers):
    """POST /moto-api/ec2ami/copies-ready: every copy kept pending by
    ``copy_pending_seconds`` is ready now, so a test moves on when it says. Answers
    {"ready": how many}."""
    ready = 0
    now = time.time()
    for account in list(Moto.ec2_backends.values()):
        for backend in list(account.values()):
            for ami in list(backend.amis.values()):
                if ami.__dict__.get("_moto_ext_ready_at") is not None:
                    ami._moto_ext_ready_at = now
                    ready += 1
            refresh(backend)
    return 200, {"Content-Type": "application/json"}, json.dumps({"ready": ready})


def end_cooldowns(request, full_url, headers):
    """POST /moto-api/ec2ami/end-cooldowns: every running deregistration protection
    cooldown ends now (what AWS shows once its 24 hours have passed), so a test moves
    on when it says, not when a clock says. Answers {"ended": how many}."""
    ended = 0
    now = time.time()
    for account in list(Moto.ec2_backends.values()):
        for backend in list(account.values()):
            for ami in list(backend.amis.values()):
                if ami.__dict__.get("_moto_ext_protected_until") is not None:
                    ami._moto_ext_protected_until = now
                    ended += 1
            refresh(backend)
    return 200, {"Content-Type": "application/json"}, json.dumps({"ended": ended})


# ---------------------------------------------------------------------------------------
# The console: GetConsoleOutput from a wired guest, GetConsoleScreenshot (not in moto)

# EC2 answers at most the last 64 KiB of the console.
CONSOLE_MAX = 64 * 1024


def console_text(instance_id):
    """The console of `instance_id` as the harness wired it, or None."""
    wired = CONFIG.get("console_output") or {}
    spec = wired.get(instance_id, wired.get("*"))
    if spec is None:
        return None
    if "file" in spec:
        try:
            with open(spec["file"], "rb") as f:
                data = f.read()
        except OSError:
            data = b""
        return data[-CONSOLE_MAX:].decode("utf-8", "replace")
    return spec.get("text", "")[-CONSOLE_MAX:]


def live_instance(self):
    instance_id = self._get_param("InstanceId")
    if not instance_id:
        raise error("MissingParameter", "The request must contain the parameter InstanceId")
    # Raises InvalidInstanceID.NotFound as AWS does.
    return self.ec2_backend.get_instance(instance_id)


def get_console_output(self):
    """GetConsoleOutput: the wired console (the latest 64 KiB), else moto's sample."""
    instance = live_instance(self)
    text = console_text(instance.id)
    if text is None:
        return ORIGINAL["get_console_output"](self)
    encoded = Moto.Base64EncodedString.from_raw_string(text)
    return Moto.ActionResult(
        {"InstanceId": instance.id, "Timestamp": utcnow(), "Output": encoded}
    )


def png(width, height, rows):
    """A greyscale PNG; `rows` gives each row's bytes."""
    import struct
    import zlib

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + bytes(r) for r in rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def screen_of(text, cols=80, lines=25, cw=8, ch=16):
    """A picture of the console's last screenful: a block per printed character, as a
    VGA text screen would show them (no font: the shape of the text, not its glyphs)."""
    shown = [l[:cols] for l in text.replace("\r", "").split("\n")][-lines:]
    width, height = cols * cw, lines * ch
    rows = []
    for y in range(height):
        line = shown[y // ch] if y // ch < len(shown) else ""
        inner = 2 <= y % ch < ch - 3
        row = bytearray(width)
        if inner:
            for i, c in enumerate(line):
                if not c.isspace():
                    row[i * cw + 1 : i * cw + cw - 1] = b"\xc0" * (cw - 2)
        rows.append(row)
    return png(width, height, rows)


def get_console_screenshot(self):
    """GetConsoleScreenshot (not in moto): a PNG of the instance's screen, drawn from
    the wired console (a blank screen without one), base64 in ImageData."""
    import base64

    instance = live_instance(self)
    text = console_text(instance.id) or ""
    data = base64.b64encode(screen_of(text)).decode()
    return Moto.ActionResult({"InstanceId": instance.id, "ImageData": data})


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def refresh(backend):
    """What time does to images: pending copies become available, cooldowns run out."""
    now = time.time()
    for ami in list(backend.amis.values()):
        ready = ami.__dict__.get("_moto_ext_ready_at")
        if ready is not None and now >= ready and ami.state == "pending":
            ami.state = "available"
            ami._moto_ext_ready_at = None
        until = ami.__dict__.get("_moto_ext_protected_until")
        if until is not None and now >= until:
            ami.deregistration_protection = "disabled"
            ami._moto_ext_protected_until = None


# ---------------------------------------------------------------------------------------
# Deregistration protection


def protection_state(ami):
    return getattr(ami, "deregistration_protection", None) or "disabled"


def protected(ami):
    """True while DeregisterImage is refused: enabled, or in its cooldown."""
    until = ami.__dict__.get("_moto_ext_protected_until")
    if until is not None and time.time() < until:
        return True
    return protection_state(ami) in ("enabled", "enabled-with-cooldown")


def enable_image_deregistration_protection(self):
    """EnableImageDeregistrationProtection (WithCooldown: 24 h after disabling)."""
    image_id = self._get_param("ImageId")
    cooldown = str(self._get_param("WithCooldown", False)).lower() == "true"
    self.error_on_dryrun()
    ami = find_image(self.ec2_backend, image_id)
    ami.deregistration_protection = "enabled-with-cooldown" if cooldown else "enabled"
    ami._moto_ext_protected_until = None
    return Moto.ActionResult({"Return": "true"})


def disable_image_deregistration_protection(self):
    """DisableImageDeregistrationProtection: at once, or after the cooldown."""
    image_id = self._get_param("ImageId")
    self.error_on_dryrun()
    ami = find_image(self.ec2_backend, image_id)
    if protection_state(ami) == "enabled-with-cooldown":
        until = time.time() + float(CONFIG["cooldown_seconds"])
        ami._moto_ext_protected_until = until
        when = datetime.datetime.fromtimestamp(until, datetime.timezone.utc)
        ami.deregistration_protection = f"disabled-until {when:%Y-%m-%dT%H:%M:%S.000Z}"
    elif not protection_state(ami).startswith("disabled-until"):
        ami.deregistration_protection = "disabled"
    return Moto.ActionResult({"Return": "true"})


# ---------------------------------------------------------------------------------------
# UEFI data and time-based copies

UEFI_DATA_MAX = 64000


def check_uefi_data(data, boot_mode):
    if data is None:
        return
    if len(data) > UEFI_DATA_MAX:
        raise error(
            "InvalidParameterValue",
            f"UefiData is {len(data)} characters long; the maximum is {UEFI_DATA_MAX}.",
        )
    if boot_mode in (None, "legacy-bios"):
        raise error(
            "InvalidParameterCombination",
            "UefiData requires the boot mode uefi or uefi-preferred.",
        )


def check_completion(value):
    """SnapshotCopyCompletionDurationMinutes: 15-minute steps, 15 to 2880."""
    if value is None:
        return
    minutes = int(value)
    if minutes % 15 != 0 or not 15 <= minutes <= 2880:
        raise error(
            "InvalidParameterValue",
            f"Value ({minutes}) for parameter SnapshotCopyCompletionDurationMinutes is invalid. "
            "Specify a multiple of 15 from 15 to 2880.",
        )


# ---------------------------------------------------------------------------------------
# DisableImage / EnableImage


def disable_image(self):
    """DisableImage: disabled, every launch permission removed."""
    image_id = self._get_param("ImageId")
    self.error_on_dryrun()
    ami = find_image(self.ec2_backend, image_id)
    if ami.owner_id != self.ec2_backend.account_id:
        raise error("AuthFailure", f"Not authorized for image:{image_id}")
    ami.state = "disabled"
    ami.launch_permissions.clear()
    return Moto.ActionResult({"Return": True})


def enable_image(self):
    """EnableImage: available again; the launch permissions are not given back."""
    image_id = self._get_param("ImageId")
    self.error_on_dryrun()
    ami = find_image(self.ec2_backend, image_id)
    if ami.state == "disabled":
        ami.state = "available"
    return Moto.ActionResult({"Return": True})


def run_instances(self):
    """RunInstances refusing a disabled image."""
    image_id = self._get_param("ImageId")
    for backend in (self.ec2_backend,):
        ami = backend.amis.get(image_id)
        if ami is not None and ami.state == "disabled":
            raise error(
                "InvalidAMIID.Unavailable",
                f"The image id '[{image_id}]' is disabled and can't be used to launch instances.",
            )
    return ORIGINAL["run_instances"](self)


# ---------------------------------------------------------------------------------------
# Snapshot block public access


def snapshot_bpa(backend):
    return region_state(backend, "snapshot_bpa", {"state": "unblocked"})


def get_snapshot_block_public_access_state(self):
    self.error_on_dryrun()
    return Moto.ActionResult(
        {"State": snapshot_bpa(self.ec2_backend)["state"], "ManagedBy": "account"}
    )


def enable_snapshot_block_public_access(self):
    state = self._get_param("State")
    self.error_on_dryrun()
    check_choice("State", state, ("block-all-sharing", "block-new-sharing"))
    if state is None:
        raise error("MissingParameter", "The request must contain the parameter State")
    snapshot_bpa(self.ec2_backend)["state"] = state
    return Moto.ActionResult({"State": state})


def disable_snapshot_block_public_access(self):
    self.error_on_dryrun()
    snapshot_bpa(self.ec2_backend)["state"] = "unblocked"
    return Moto.ActionResult({"State": "unblocked"})


def modify_snapshot_attribute(self):
    """ModifySnapshotAttribute refusing a public share while snapshot BPA is on."""
    groups = self._get_param("GroupNames", []) or []
    adds = (self._get_param("CreateVolumePermission") or {}).get("Add") or []
    public = (self._get_param("OperationType") == "add" and "all" in groups) or any(
        p.get("Group") == "all" for p in adds
    )
    if public and snapshot_bpa(self.ec2_backend)["state"] != "unblocked":
        raise error(
            "OperationNotPermitted",
            "You can't publicly share this snapshot because block public access for "
            "snapshots is enabled for this account.",
        )
    return ORIGINAL["modify_snapshot_attribute"](self)


# ---------------------------------------------------------------------------------------
# Service Quotas: EC2's Public AMIs

PUBLIC_AMIS_QUOTA = "L-0E3CBAB9"


def get_service_quota(self, service_code, quota_code):
    """ServiceQuotasBackend.get_service_quota that knows EC2's Public AMIs quota."""
    if service_code == "ec2" and quota_code == PUBLIC_AMIS_QUOTA:
        if CONFIG["service_quotas_denied"]:
            raise Moto.JsonRESTError(
                "AccessDeniedException",
                "User is not authorized to perform servicequotas:GetServiceQuota",
            )
        quota = CONFIG["public_ami_quota"]
        if isinstance(quota, dict):
            quota = quota.get(self.region_name, 5)
        return {
            "ServiceCode": "ec2",
            "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
            "QuotaArn": f"arn:aws:servicequotas:{self.region_name}:{self.account_id}:ec2/{quota_code}",
            "QuotaCode": quota_code,
            "QuotaName": "Public AMIs",
            "Value": float(quota),
            "Unit": "None",
            "Adjustable": True,
            "GlobalQuota": False,
        }
    return ORIGINAL["get_service_quota"](self, service_code, quota_code)


# ---------------------------------------------------------------------------------------
# The Recycle Bin: rbin's rules (a REST-JSON service moto lacks) and EC2's bin calls

RETENTION_UNITS = ("DAYS",)
RESOURCE_TYPES = ("EBS_SNAPSHOT", "EC2_IMAGE")


def rbin_rules(account, region):
    return region_state(Moto.ec2_backends[account][region], "rbin_rules", {})


def retention(backend, resource_type, tags):
    """The longest retention (days) of the rules in force that cover a resource."""
    best = None
    for rule in rbin_rules(backend.account_id, backend.region_name).values():
        if rule["ResourceType"] != resource_type or rule["Status"] != "available":
            continue
        has = lambda t: tags.get(t["ResourceTagKey"]) == t.get("ResourceTagValue", "")
        if rule["ResourceTags"]:
            covers = any(has(t) for t in rule["ResourceTags"])
        else:
            covers = not any(has(t) for t in rule["ExcludeResourceTags"])
        if covers:
            days = rule["RetentionPeriod"]["RetentionPeriodValue"]
            best = days if best is None else max(best, days)
    return best


def to_bin(backend, key, resource, days):
    enter = utcnow()
    region_state(backend, key, {})[resource.id] = (
        resource,
        enter,
        enter + datetime.timedelta(days=days),
    )


def binned(backend, key):
    """What is in the bin (the expired is gone for good)."""
    items = region_state(backend, key, {})
    now = utcnow()
    for rid in [r for r, (_, _, exit_time) in items.items() if exit_time <= now]:
        items.pop(rid)
    return items


def rbin_rule_view(rule, full):
    keys = ("Identifier", "Description", "RetentionPeriod", "LockState", "RuleArn")
    if full:
        keys += ("ResourceType", "ResourceTags", "ExcludeResourceTags", "Status", "Tags")
    return {k: rule[k] for k in keys if k in rule}


def rbin_app(environ, start_response, account, region):
    """The rbin REST-JSON API: POST /rules, POST /list-rules, GET|DELETE /rules/{id}."""
    method = environ["REQUEST_METHOD"]
    path = environ.get("PATH_INFO", "")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""

    def answer(status, doc, error_type=None):
        body = json.dumps(doc).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        if error_type:
            headers.append(("x-amzn-ErrorType", error_type))
        start_response(status, headers)
        return [body]

    def invalid(message):
        return answer("400 Bad Request", {"Message": message, "Reason": "INVALID_VALUE"},
                      "ValidationException")

    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return invalid("The request body is not JSON.")
    with LOCK:
        rules = rbin_rules(account, region)
        if method == "POST" and path == "/rules":
            period = body.get("RetentionPeriod") or {}
            value = period.get("RetentionPeriodValue")
            if period.get("RetentionPeriodUnit") not in RETENTION_UNITS or not (
                isinstance(value, int) and 1 <= value <= 3650
            ):
                return invalid("RetentionPeriod must be 1 to 3650 DAYS.")
            if body.get("ResourceType") not in RESOURCE_TYPES:
                return invalid(f"ResourceType must be one of {', '.join(RESOURCE_TYPES)}.")
            if body.get("ResourceTags") and body.get("ExcludeResourceTags"):
                return invalid("Specify ResourceTags or ExcludeResourceTags, not both.")
            rid = f"{len(rules) + 1:011d}"
            rule = {
                "Identifier": rid,
                "Description": body.get("Description", ""),
                "RetentionPeriod": {"RetentionPeriodValue": value, "RetentionPeriodUnit": "DAYS"},
                "ResourceType": body["ResourceType"],
                "ResourceTags": body.get("ResourceTags") or [],
                "ExcludeResourceTags": body.get("ExcludeResourceTags") or [],
                "Tags": body.get("Tags") or [],
                "Status": "available",
                "LockState": "unlocked",
                "RuleArn": f"arn:aws:rbin:{region}:{account}:rule/{rid}",
            }
            rules[rid] = rule
            return answer("201 Created", rbin_rule_view(rule, True))
        if method == "POST" and path == "/list-rules":
            kind = body.get("ResourceType")
            if kind not in RESOURCE_TYPES:
                return invalid(f"ResourceType must be one of {', '.join(RESOURCE_TYPES)}.")
            found = [rbin_rule_view(r, False) for r in rules.values() if r["ResourceType"] == kind]
            return answer("200 OK", {"Rules": found})
        if path.startswith("/rules/"):
            rid = path[len("/rules/"):]
            if rid not in rules:
                return answer(
                    "404 Not Found",
                    {"Message": f"Rule {rid} does not exist.", "Reason": "RULE_NOT_FOUND"},
                    "ResourceNotFoundException",
                )
            if method == "GET":
                return answer("200 OK", rbin_rule_view(rules[rid], True))
            if method == "DELETE":
                rules.pop(rid)
                return answer("204 No Content", {})
    return invalid(f"{method} {path} is not a Recycle Bin operation this harness knows.")


def dispatch(self, environ, start_response):
    """moto's server, with the rbin service answered here (moto has none)."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    try:
        scope = auth.split(",")[0].split()[1].split("/")
        region, service = scope[2], scope[3]
    except (IndexError, ValueError):
        service = None
    if service == "rbin":
        return rbin_app(environ, start_response, Moto.DEFAULT_ACCOUNT_ID, region)
    return ORIGINAL["dispatch"](self, environ, start_response)


def bin_page(self, key, items, limits):
    ids = self._get_param("ImageIds" if key == "Images" else "SnapshotIds", []) or []
    if ids:
        items = [i for i in items if i[id_key(key)] in ids]
    return paged(self, key, items, limits)


def id_key(key):
    return "ImageId" if key == "Images" else "SnapshotId"


def list_images_in_recycle_bin(self):
    """ListImagesInRecycleBin."""
    self.error_on_dryrun()
    items = [
        {
            "ImageId": ami.id,
            "Name": ami.name,
            "Description": ami.description,
            "RecycleBinEnterTime": enter,
            "RecycleBinExitTime": exit_time,
        }
        for ami, enter, exit_time in binned(self.ec2_backend, "bin_images").values()
    ]
    return bin_page(self, "Images", items, (1, 1000))


def list_snapshots_in_recycle_bin(self):
    """ListSnapshotsInRecycleBin."""
    self.error_on_dryrun()
    items = [
        {
            "SnapshotId": snap.id,
            "Description": snap.description,
            "VolumeId": getattr(snap.volume, "id", None) if getattr(snap, "volume", None) else None,
            "RecycleBinEnterTime": enter,
            "RecycleBinExitTime": exit_time,
        }
        for snap, enter, exit_time in binned(self.ec2_backend, "bin_snapshots").values()
    ]
    return bin_page(self, "Snapshots", items, (5, 1000))


def restore_image_from_recycle_bin(self):
    """RestoreImageFromRecycleBin: the image is back, available."""
    image_id = self._get_param("ImageId")
    self.error_on_dryrun()
    backend = self.ec2_backend
    with LOCK:
        items = binned(backend, "bin_images")
        if image_id not in items:
            raise error(
                "InvalidAMIID.NotFound",
                f"The image id '[{image_id}]' does not exist in the Recycle Bin",
            )
        ami = items[image_id][0]
        for other in backend.amis.values():
            if other.name == ami.name and other.owner_id == ami.owner_id:
                raise error(
                    "InvalidAMIName.Duplicate",
                    f"AMI name {ami.name} is already in use by AMI {other.id}",
                )
        items.pop(image_id)
        ami.state = "available"
        backend.amis[image_id] = ami
        if image_id in backend.deleted_amis:
            backend.deleted_amis.remove(image_id)
    return Moto.ActionResult({"Return": True})


def restore_snapshot_from_recycle_bin(self):
    """RestoreSnapshotFromRecycleBin."""
    snapshot_id = self._get_param("SnapshotId")
    self.error_on_dryrun()
    backend = self.ec2_backend
    with LOCK:
        items = binned(backend, "bin_snapshots")
        if snapshot_id not in items:
            raise error(
                "InvalidSnapshot.NotFound",
                f"The snapshot '{snapshot_id}' does not exist in the Recycle Bin",
            )
        snap, _, _ = items.pop(snapshot_id)
        backend.snapshots[snapshot_id] = snap
    return Moto.ActionResult(
        {
            "SnapshotId": snapshot_id,
            "Description": snap.description,
            "State": "completed",
            "VolumeSize": snap.volume_size,
            "OwnerId": snap.owner_id,
        }
    )
# Realism (issue 15): time, eventual consistency and EBS errors as AWS has them.
#
# Everything here is off unless the harness asks for it through moto's environment
# (testkit/src/realism.rs sets these; testkit/WORLD.md documents every deviation):
#
# - MOTO_EXT_PENDING_POLLS=N: a new image (RegisterImage, CopyImage) or snapshot (EBS
#   CompleteSnapshot, the snapshots of a copy) is `pending` in the first N
#   DescribeImages / DescribeSnapshots answers that show it;
# - MOTO_EXT_LATENCY="Op=seconds,...": and for at least that long after the request
#   (Op: RegisterImage, CopyImage, CompleteSnapshot), the harness's scaled latency model;
# - MOTO_EXT_INVISIBLE_POLLS=N: a new image is missing from the first N DescribeImages
#   answers that would show it (InvalidAMIID.NotFound when asked for by id);
# - MOTO_EXT_FAIL_COPIES_TO="region,...": a copy to one of these regions ends `failed`
#   with a StateReason, and its snapshots `error`;
# - MOTO_EXT_BPA_DELAY=seconds: an Enable/DisableImageBlockPublicAccess takes effect
#   that long after it is asked for (AWS: up to 10 minutes), the old state until then.
#
# Always on: the EBS direct APIs answer ResourceNotFoundException (404, reason
# SNAPSHOT_NOT_FOUND) for an unknown snapshot, as AWS does (moto: a KeyError, HTTP 500),
# and a snapshot started with StartSnapshot is `pending` until CompleteSnapshot.

REALISM_REQUIRED = [
    "moto.ebs.models:EBSBackend.start_snapshot",
    "moto.ebs.models:EBSBackend.complete_snapshot",
    "moto.ebs.models:EBSBackend.put_snapshot_block",
    "moto.ebs.models:EBSBackend.get_snapshot_block",
    "moto.ebs.models:EBSBackend.list_changed_blocks",
    "moto.ebs.models:EBSBackend.list_snapshot_blocks",
    "moto.ec2.models.elastic_block_store:EBSBackend.describe_snapshots",
    "moto.ec2.models.elastic_block_store:Snapshot.progress",
    "moto.core.exceptions:JsonRESTError",
]


def realism_knobs(environ):
    """The realism settings of `environ` (all off when unset)."""

    def number(key):
        text = environ.get(key) or "0"
        try:
            return int(text)
        except ValueError:
            sys.stderr.write(f"moto_ext: {key}={text!r} is not a whole number\n")
            sys.exit(3)

    latency = {}
    for item in filter(None, (environ.get("MOTO_EXT_LATENCY") or "").split(",")):
        op, _, secs = item.partition("=")
        try:
            latency[op.strip()] = float(secs)
        except ValueError:
            sys.stderr.write(f"moto_ext: MOTO_EXT_LATENCY item {item!r} is not Op=seconds\n")
            sys.exit(3)
    try:
        bpa_delay = float(environ.get("MOTO_EXT_BPA_DELAY") or "0")
    except ValueError:
        sys.stderr.write("moto_ext: MOTO_EXT_BPA_DELAY is not a number of seconds\n")
        sys.exit(3)
    return {
        "bpa_delay": bpa_delay,
        "pending_polls": number("MOTO_EXT_PENDING_POLLS"),
        "invisible_polls": number("MOTO_EXT_INVISIBLE_POLLS"),
        "latency": latency,
        "fail_copies_to": set(
            filter(None, (environ.get("MOTO_EXT_FAIL_COPIES_TO") or "").split(","))
        ),
    }


REALISM = realism_knobs({})

# The StateReason of a copy the harness makes fail (AWS's reasons look like this one;
# the exact text of a failed copy is not documented).
COPY_FAILED_REASON = {
    "Code": "Server.InternalError",
    "Message": "Copy of the image failed: an internal error occurred (injected).",
}


def ebs_error(status, code, message, reason=None):
    """An EBS direct API error as AWS answers it: the status, x-amzn-errortype, a JSON
    body with message and reason."""
    from moto.core.exceptions import JsonRESTError

    err = JsonRESTError(code, message)
    err.code = status
    body = {"message": message, "Message": message}
    if reason:
        body["reason"] = reason
        body["Reason"] = reason
    err.description = json.dumps(body)
    return err


def snapshot_not_found(snapshot_id):
    return ebs_error(
        404,
        "ResourceNotFoundException",
        f"The snapshot '{snapshot_id}' does not exist.",
        "SNAPSHOT_NOT_FOUND",
    )


def life(op, final, reason=None, invisible=0):
    """When a new resource stops being pending: after this many answers and seconds."""
    return {
        "polls": REALISM["pending_polls"],
        "until": time.monotonic() + REALISM["latency"].get(op, 0.0),
        "invisible": invisible,
        "final": final,
        "reason": reason,
    }


def realism_on(op):
    return bool(
        REALISM["pending_polls"] > 0
        or REALISM["latency"].get(op, 0.0) > 0
        or REALISM["invisible_polls"] > 0
        or REALISM["fail_copies_to"]
    )


def begin_image_life(ami, op, failed):
    """Make a new image pending (and invisible for a while); failed copies end failed."""
    ami._moto_ext_life = life(
        op,
        "failed" if failed else "available",
        COPY_FAILED_REASON if failed else None,
        REALISM["invisible_polls"],
    )
    ami.state = "pending"
    ami.state_reason = None


def begin_snapshot_life(snapshot, op, failed=False):
    snapshot._moto_ext_life = life(op, "error" if failed else "completed")
    snapshot.status = "pending"


def shown(resource, kind):
    """Advance a resource's life by one answer that would show it: False while it is
    invisible; otherwise it shows the state this answer gives."""
    lived = resource.__dict__.get("_moto_ext_life")
    if lived is None:
        return True
    if lived["invisible"] > 0:
        lived["invisible"] -= 1
        return False
    if lived["polls"] > 0 or time.monotonic() < lived["until"]:
        lived["polls"] = max(0, lived["polls"] - 1)
        return True
    del resource.__dict__["_moto_ext_life"]
    if kind == "image":
        resource.state = lived["final"]
        if lived["reason"]:
            resource.state_reason = lived["reason"]
    else:
        resource.status = lived["final"]
    return True


def realistic_describe_images(original):
    """DescribeImages where new images are invisible for a while, then pending."""

    def describe(self):
        result = original(self)
        with LOCK:
            images = [i for i in result.result["Images"] if shown(i, "image")]
        if self._get_param("ImageIds", []) and not images:
            raise Moto.InvalidAMIIdError(self._get_param("ImageIds", []))
        result.result["Images"] = images
        return result

    return describe


def realistic_describe_snapshots(original):
    """EBSBackend.describe_snapshots where new snapshots are pending for a while."""

    def describe(self, *args, **kwargs):
        snapshots = original(self, *args, **kwargs)
        with LOCK:
            for s in snapshots:
                shown(s, "snapshot")
        return snapshots

    return describe


def snapshot_progress(snapshot):
    """Snapshot.progress as AWS shows it: 100% only once completed."""
    return "100%" if snapshot.status == "completed" else "0%"


def timed_image_handler(handler, op):
    """RegisterImage / CopyImage whose new image lives through the realism settings."""

    def run(self):
        backend = self.ec2_backend
        before = set(backend.amis)
        result = handler(self)
        image_id = result.result.get("ImageId")
        if image_id in before or not realism_on(op):
            return result
        ami = backend.amis.get(image_id)
        if ami is None:
            return result
        failed = op == "CopyImage" and backend.region_name in REALISM["fail_copies_to"]
        with LOCK:
            begin_image_life(ami, op, failed)
            if op == "CopyImage":
                for snapshot_id in mapped_snapshots(ami):
                    snapshot = backend.snapshots.get(snapshot_id)
                    if snapshot is not None:
                        begin_snapshot_life(snapshot, op, failed)
        return result

    run.__name__ = handler.__name__
    return run


def ebs_checked(method, *id_params):
    """An EBS direct model method that answers ResourceNotFoundException for an unknown
    snapshot, as AWS does."""
    names = list(inspect.signature(method).parameters)[1:]

    def run(self, *args, **kwargs):
        given = dict(zip(names, args))
        given.update(kwargs)
        for p in id_params:
            snapshot_id = given.get(p)
            if snapshot_id is not None and snapshot_id not in self.snapshots:
                raise snapshot_not_found(snapshot_id)
        return method(self, *args, **kwargs)

    return run


def ebs_start_snapshot(original):
    """StartSnapshot: the EC2 snapshot is `pending` until CompleteSnapshot (moto:
    `completed` at once)."""

    def start(self, *args, **kwargs):
        ebs_snapshot = original(self, *args, **kwargs)
        self.ec2_backend.snapshots[ebs_snapshot.snapshot_id].status = "pending"
        return ebs_snapshot

    return start


def ebs_complete_snapshot(original):
    """CompleteSnapshot: the EC2 snapshot completes after the latency model's time."""

    def complete(self, snapshot_id):
        if snapshot_id not in self.snapshots:
            raise snapshot_not_found(snapshot_id)
        out = original(self, snapshot_id)
        snapshot = self.ec2_backend.snapshots[snapshot_id]
        with LOCK:
            if realism_on("CompleteSnapshot"):
                begin_snapshot_life(snapshot, "CompleteSnapshot")
            else:
                snapshot.status = "completed"
        return out

    return complete


def install_realism():
    """Patch moto for the realism settings of this process's environment."""
    missing = []
    for spec in REALISM_REQUIRED:
        module, _, path = spec.partition(":")
        try:
            obj = importlib.import_module(module)
            for name in path.split("."):
                obj = getattr(obj, name)
        except (ImportError, AttributeError):
            missing.append(spec)
    if missing:
        sys.stderr.write(
            f"moto_ext: moto lacks what the realism section relies on: {', '.join(missing)}\n"
        )
        sys.exit(3)
    REALISM.update(realism_knobs(os.environ))
    ebs_models = importlib.import_module("moto.ebs.models")
    Ebs = ebs_models.EBSBackend
    Ebs.start_snapshot = ebs_start_snapshot(Ebs.start_snapshot)
    Ebs.complete_snapshot = ebs_complete_snapshot(Ebs.complete_snapshot)
    Ebs.put_snapshot_block = ebs_checked(Ebs.put_snapshot_block, "snapshot_id")
    Ebs.get_snapshot_block = ebs_checked(Ebs.get_snapshot_block, "snapshot_id")
    Ebs.list_snapshot_blocks = ebs_checked(Ebs.list_snapshot_blocks, "snapshot_id")
    Ebs.list_changed_blocks = ebs_checked(
        Ebs.list_changed_blocks, "first_snapshot_id", "second_snapshot_id"
    )
    Ec2Ebs = Moto.EBSBackend
    Ec2Ebs.describe_snapshots = realistic_describe_snapshots(Ec2Ebs.describe_snapshots)
    store = importlib.import_module("moto.ec2.models.elastic_block_store")
    store.Snapshot.progress = property(snapshot_progress)
    ORIGINAL["describe_images"] = realistic_describe_images(ORIGINAL["describe_images"])
    Moto.AmisResponse.register_image = timed_image_handler(register_image, "RegisterImage")
    Moto.AmisResponse.copy_image = timed_image_handler(copy_image, "CopyImage")


# ---------------------------------------------------------------------------------------
# Limits and rules as AWS documents them (issue 15). Always on.
#
# - EnableImageDeprecation: a public image cannot be deprecated more than 2 years after
#   its creation (private: 10 years from now, checked by `deprecation_time`).
# - ClientToken (CopyImage, RunInstances): at most 64 ASCII characters.
# - RunInstances honours ClientToken: a retry with the same token and parameters answers
#   the first launch's reservation instead of launching again (moto launches again); other
#   parameters with the same token: IdempotentParameterMismatch.
# - SSM PutParameter: a parameter's data type cannot change to or from aws:ec2:image
#   (ValidationException); an aws:ec2:image value that is not an AMI of the region is
#   validated after the answer: PutParameter succeeds but nothing is stored.

PUBLIC_DEPRECATION_LIMIT = datetime.timedelta(days=730)
CLIENT_TOKEN_MAX = 64
AMI_ID_RE = re.compile(r"ami-(?:[0-9a-f]{8}|[0-9a-f]{17})")
IMAGE_DATA_TYPE = "aws:ec2:image"


def check_client_token(token):
    if token is not None and (len(token) > CLIENT_TOKEN_MAX or not token.isascii()):
        raise error(
            "InvalidParameterValue",
            f"Value ({token}) for parameter clientToken is invalid. The client token must "
            f"be at most {CLIENT_TOKEN_MAX} ASCII characters.",
        )


def limited_enable_image_deprecation(original):
    """EnableImageDeprecation refusing a public image's date past 2 years after creation."""

    def enable(self):
        image_id = self._get_param("ImageId")
        when = self._get_param("DeprecateAt")
        ami = self.ec2_backend.amis.get(image_id)
        if ami is not None and when is not None and ami.is_public:
            created = ami.creation_date
            if isinstance(created, str):
                created = naive_utc(created)
            if parse_time(when).replace(tzinfo=None) > created + PUBLIC_DEPRECATION_LIMIT:
                raise error(
                    "InvalidParameterValue",
                    f"The deprecation time of a public AMI can't be more than 2 years after "
                    f"its creation date ({created:%Y-%m-%dT%H:%M:%SZ}) for {image_id}.",
                )
        return original(self)

    enable.__name__ = original.__name__
    return enable


def limited_copy_image(original):
    def copy(self):
        check_client_token(self._get_param("ClientToken"))
        return original(self)

    copy.__name__ = original.__name__
    return copy


def idempotent_run_instances(original):
    """RunInstances that honours ClientToken, as AWS does."""

    def run(self):
        token = self._get_param("ClientToken")
        if token is None:
            return original(self)
        check_client_token(token)
        request = repr(
            sorted((k, repr(v)) for k, v in self.params.items() if k != "ClientToken")
        )
        with LOCK:
            tokens = region_state(self.ec2_backend, "run_tokens", {})
            if token in tokens:
                earlier, result = tokens[token]
                if earlier != request:
                    raise error(
                        "IdempotentParameterMismatch",
                        f"The client token {token} was already used with other parameters.",
                    )
                return result
            result = original(self)
            tokens[token] = (request, result)
        return result

    run.__name__ = original.__name__
    return run


def ssm_error(code, message):
    from moto.core.exceptions import JsonRESTError

    return JsonRESTError(code, message)


def validated_put_parameter(original):
    """PutParameter with AWS's data type rules and aws:ec2:image validation."""

    def put(self):
        name = self._get_param("Name")
        value = self._get_param("Value")
        data_type = self._get_param("DataType")
        overwrite = bool(self._get_param("Overwrite", False))
        previous = self.ssm_backend.get_parameter(name) if name else None
        if previous is not None and overwrite and data_type is not None:
            if (data_type == IMAGE_DATA_TYPE) != (previous.data_type == IMAGE_DATA_TYPE):
                raise ssm_error(
                    "ValidationException",
                    f"The data type of parameter {name} is {previous.data_type}; it can't "
                    f"be changed to {data_type}.",
                )
        effective = data_type or (previous.data_type if previous is not None else "text")
        if effective == IMAGE_DATA_TYPE and (previous is None or overwrite):
            ec2 = Moto.ec2_backends[self.current_account][self.region]
            ami = ec2.amis.get(value) if AMI_ID_RE.fullmatch(value or "") else None
            if ami is None or ami.state in ("failed", "error", "deregistered"):
                # Validated after the answer: AWS answers success and stores nothing.
                version = previous.version + 1 if previous is not None else 1
                return Moto.ActionResult({"Version": version, "Tier": "Standard"})
        result = original(self)
        if data_type is None and previous is not None:
            # An overwrite that names no data type keeps the parameter's (moto: `text`).
            latest = self.ssm_backend.get_parameter(name)
            if latest is not None:
                latest.data_type = previous.data_type
        return result

    put.__name__ = original.__name__
    return put


def install_limits():
    """Patch moto for the limits and rules above."""
    instances = importlib.import_module("moto.ec2.responses.instances").InstanceResponse
    ssm = importlib.import_module("moto.ssm.responses").SimpleSystemManagerResponse
    if not all(
        hasattr(c, m)
        for c, m in ((instances, "run_instances"), (ssm, "put_parameter"))
    ) or not issubclass(Moto.EC2Response, instances):
        sys.stderr.write("moto_ext: moto lacks InstanceResponse.run_instances or SSM put_parameter\n")
        sys.exit(3)
    Moto.AmisResponse.enable_image_deprecation = limited_enable_image_deprecation(
        Moto.AmisResponse.enable_image_deprecation
    )
    Moto.AmisResponse.copy_image = limited_copy_image(Moto.AmisResponse.copy_image)
    instances.run_instances = idempotent_run_instances(instances.run_instances)
    ssm.put_parameter = validated_put_parameter(ssm.put_parameter)


# ---------------------------------------------------------------------------------------

ORIGINAL = {}


def install():
    """Check moto, then patch it."""
    resolve()
    Ami, EBSBackend = Moto.Ami, Moto.EBSBackend
    ORIGINAL["block_device_mappings"] = Ami.block_device_mappings.fget
    ORIGINAL["get_filter_value"] = Ami.get_filter_value
    ORIGINAL["delete_snapshot"] = EBSBackend.delete_snapshot
    ORIGINAL["describe_image_attribute"] = Moto.AmisResponse.describe_image_attribute
    ORIGINAL["modify_image_attribute"] = Moto.AmisResponse.modify_image_attribute
    ORIGINAL["describe_images"] = Moto.AmisResponse.describe_images
    ORIGINAL["create_tags"] = Moto.TagBackend.create_tags
    ORIGINAL["dispatch"] = Moto.DomainDispatcherApplication.__call__
    ORIGINAL["run_instances"] = Moto.InstanceResponse.run_instances
    ORIGINAL["modify_snapshot_attribute"] = Moto.ElasticBlockStore.modify_snapshot_attribute
    ORIGINAL["get_service_quota"] = Moto.ServiceQuotasBackend.get_service_quota
    ORIGINAL["get_console_output"] = Moto.General.get_console_output

    Ami.block_device_mappings = property(mappings_of)
    Ami.get_filter_value = image_filter_value
    EBSBackend.delete_snapshot = delete_snapshot
    Moto.TagBackend.create_tags = create_tags
    for handler in (
        register_image,
        copy_image,
        enable_image_deprecation,
        disable_image_deprecation,
        deregister_image,
        describe_image_attribute,
        get_image_block_public_access_state,
        enable_image_block_public_access,
        disable_image_block_public_access,
        modify_image_attribute,
        describe_images,
        enable_image_deregistration_protection,
        disable_image_deregistration_protection,
        disable_image,
        enable_image,
        list_images_in_recycle_bin,
        restore_image_from_recycle_bin,
    ):
        setattr(Moto.AmisResponse, handler.__name__, handler)
    for handler in (
        get_snapshot_block_public_access_state,
        enable_snapshot_block_public_access,
        disable_snapshot_block_public_access,
        modify_snapshot_attribute,
        list_snapshots_in_recycle_bin,
        restore_snapshot_from_recycle_bin,
    ):
        setattr(Moto.ElasticBlockStore, handler.__name__, handler)
    Moto.InstanceResponse.run_instances = run_instances
    Moto.General.get_console_output = get_console_output
    Moto.InstanceResponse.get_console_screenshot = get_console_screenshot
    Moto.ServiceQuotasBackend.get_service_quota = get_service_quota
    Moto.DomainDispatcherApplication.__call__ = dispatch
    Moto.ElasticBlockStore.describe_snapshots = describe_snapshots
    Moto.LaunchTemplates.describe_launch_template_versions = describe_launch_template_versions
    Moto.url_paths["{0}/moto-api/ec2ami/generate"] = generate
    Moto.url_paths["{0}/moto-api/ec2ami/config"] = config
    Moto.url_paths["{0}/moto-api/ec2ami/last-launched"] = set_last_launched
    Moto.url_paths["{0}/moto-api/ec2ami/end-cooldowns"] = end_cooldowns
    Moto.url_paths["{0}/moto-api/ec2ami/copies-ready"] = copies_ready
    Moto.url_paths["{0}/moto-api/ec2ami/bpa-in-force"] = bpa_in_force
    install_realism()
    install_limits()
    install_lineage()


# ---------------------------------------------------------------------------------------
# Snapshot lineage (issue 12). moto ignores StartSnapshot's ParentSnapshotId; AWS makes
# the new snapshot a child: it reads its parent's blocks wherever it has none of its own
# (ListSnapshotBlocks and GetSnapshotBlock of the child show them), the child's volume
# may be larger but not smaller, the parent must be completed, and ParentSnapshotId
# with Encrypted in one request is refused. The child takes the parent's blocks (the
# same Block objects, so the same tokens) when it starts: blocks are immutable, so this
# reads exactly as sharing them does, and deleting the parent leaves the child whole,
# as AWS keeps what a child needs. A deleted snapshot leaves the EBS direct store too
# (moto keeps it, so PutSnapshotBlock to a deleted pending snapshot succeeded).

LINEAGE_REQUIRED = [
    "moto.ebs.responses:EBSResponse.start_snapshot",
    "moto.ebs.models:EBSSnapshot.to_json",
    "moto.ebs.models:ebs_backends",
    "moto.ebs.responses:EBSResponse.list_changed_blocks",
    "moto.ebs.responses:EBSResponse._get_params",
]


def ebs_validation(message, reason):
    return ebs_error(400, "ValidationException", message, reason)


def lineage_start_snapshot(original):
    """EBSResponse.start_snapshot honouring ParentSnapshotId."""

    def start(self):
        try:
            params = json.loads(self.body or b"{}")
        except ValueError:
            params = {}
        parent_id = params.get("ParentSnapshotId")
        parent = None
        if parent_id is not None:
            if params.get("Encrypted") is not None:
                raise ebs_validation(
                    "You can't specify ParentSnapshotId and Encrypted in the same request",
                    "INVALID_PARAMETER_VALUE",
                )
            backend = self.ebs_backend
            parent = backend.snapshots.get(parent_id)
            if parent is None:
                raise snapshot_not_found(parent_id)
            if parent.status != "completed":
                raise ebs_validation(
                    f"The parent snapshot {parent_id} is not completed",
                    "INVALID_PARENT_SNAPSHOT",
                )
            size = params.get("VolumeSize")
            if isinstance(size, int) and size < int(parent.volume_size):
                raise ebs_validation(
                    f"VolumeSize {size} is smaller than the parent snapshot's "
                    f"{parent.volume_size}",
                    "INVALID_VOLUME_SIZE",
                )
        out = original(self)
        if parent is None:
            return out
        body = json.loads(out)
        with LOCK:
            child = self.ebs_backend.snapshots[body["SnapshotId"]]
            child.blocks = dict(parent.blocks)
            child.parent_snapshot_id = parent_id
            LINEAGE_PARENTS[body["SnapshotId"]] = parent_id
        body["ParentSnapshotId"] = parent_id
        return json.dumps(body)

    return start


# child -> parent of every snapshot started with ParentSnapshotId; kept when either is
# deleted, as AWS keeps a lineage whose middle generation is gone.
LINEAGE_PARENTS = {}
CHANGED_TOKEN_PREFIX = "moto-ext-changed-"


def is_ancestor(first_id, second_id):
    """True when `first_id` is a parent, grandparent, ... of `second_id`."""
    seen = set()
    cur = LINEAGE_PARENTS.get(second_id)
    while cur is not None and cur not in seen:
        if cur == first_id:
            return True
        seen.add(cur)
        cur = LINEAGE_PARENTS.get(cur)
    return False


def lineage_list_changed_blocks(self):
    """ListChangedBlocks as EBS answers it (moto walks only the first snapshot's blocks,
    compares their data and ignores lineage, paging and a missing first snapshot): the
    blocks whose token differs between a first snapshot that is an ancestor of the
    second, any number of generations up, and the second (present in either one: a
    block absent from one side has no token for it), each side's own tokens, in block
    order, paged by MaxResults/NextToken/StartingBlockIndex. Without a first snapshot:
    every block of the second."""
    second_id = self.path.split("?")[0].rstrip("/").split("/")[-2]
    params = self._get_params()
    first_id = params.get("firstSnapshotId")

    def param(name, default, low, high):
        value = params.get(name)
        if value is None:
            return default
        try:
            n = int(value)
        except (TypeError, ValueError):
            n = None
        if n is None or not low <= n <= high:
            raise ebs_validation(
                f"{name} must be between {low} and {high}, got '{value}'",
                "INVALID_PARAMETER_VALUE",
            )
        return n

    limit = param("maxResults", 10000, 100, 10000)
    start = param("startingBlockIndex", 0, 0, 1 << 40)
    token = params.get("pageToken")
    prefix = f"{CHANGED_TOKEN_PREFIX}{first_id}-{second_id}-"
    if token is not None:
        if not token.startswith(prefix) or not token[len(prefix) :].isdigit():
            raise ebs_validation(f"invalid page token '{token}'", "INVALID_PAGE_TOKEN")
        start = int(token[len(prefix) :])
    store = self.ebs_backend.snapshots
    with LOCK:
        second = store.get(second_id)
        if second is None:
            raise snapshot_not_found(second_id)
        first = None
        if first_id is not None:
            first = store.get(first_id)
            if first is None:
                raise snapshot_not_found(first_id)
        for s in (first, second):
            if s is not None and s.status != "completed":
                raise ebs_validation(
                    f"The snapshot {s.snapshot_id} is not completed", "INVALID_SNAPSHOT_ID"
                )
        if first is not None and not is_ancestor(first_id, second_id):
            raise ebs_validation(
                f"The snapshots {first_id} and {second_id} are not of one lineage "
                f"({first_id} is not an ancestor of {second_id})",
                "UNRELATED_SNAPSHOTS",
            )
        one = dict(first.blocks) if first is not None else {}
        two = dict(second.blocks)
    indexes = sorted({int(i) for i in one} | {int(i) for i in two})
    changed, next_token = [], None
    for i in indexes:
        if i < start:
            continue
        a, b = one.get(str(i)), two.get(str(i))
        if a is not None and b is not None and a.block_token == b.block_token:
            continue
        if len(changed) == limit:
            next_token = f"{prefix}{i}"
            break
        item = {"BlockIndex": i}
        if a is not None:
            item["FirstBlockToken"] = a.block_token
        if b is not None:
            item["SecondBlockToken"] = b.block_token
        changed.append(item)
    out = {
        "ChangedBlocks": changed,
        "ExpiryTime": time.time() + 3600,
        "VolumeSize": second.volume_size,
        "BlockSize": second.block_size,
    }
    if next_token is not None:
        out["NextToken"] = next_token
    return json.dumps(out)


def lineage_to_json(original):
    def to_json(self):
        out = original(self)
        parent = self.__dict__.get("parent_snapshot_id")
        if parent:
            out["ParentSnapshotId"] = parent
        return out

    return to_json


def lineage_delete_snapshot(previous):
    """EC2 DeleteSnapshot that also removes the snapshot from the EBS direct store."""

    def delete(self, snapshot_id):
        done = previous(self, snapshot_id)
        store = importlib.import_module("moto.ebs.models").ebs_backends
        try:
            store[self.account_id][self.region_name].snapshots.pop(snapshot_id, None)
        except KeyError:
            pass
        return done

    return delete


def install_lineage():
    missing = []
    for spec in LINEAGE_REQUIRED:
        module, _, path = spec.partition(":")
        try:
            obj = importlib.import_module(module)
            for name in path.split("."):
                obj = getattr(obj, name)
        except (ImportError, AttributeError):
            missing.append(spec)
    if missing:
        sys.stderr.write(
            f"moto_ext: moto lacks what the lineage section relies on: {', '.join(missing)}\n"
        )
        sys.exit(3)
    responses = importlib.import_module("moto.ebs.responses")
    models = importlib.import_module("moto.ebs.models")
    responses.EBSResponse.start_snapshot = lineage_start_snapshot(
        responses.EBSResponse.start_snapshot
    )
    models.EBSSnapshot.to_json = lineage_to_json(models.EBSSnapshot.to_json)
    responses.EBSResponse.list_changed_blocks = lineage_list_changed_blocks
    Moto.EBSBackend.delete_snapshot = lineage_delete_snapshot(Moto.EBSBackend.delete_snapshot)


def opt_in_everywhere():
    """Mark every opt-in region opted in (EC2AMI_MOTO_OPT_IN=all)."""
    module = importlib.import_module("moto.ec2.models.availability_zones_and_regions")
    regions = getattr(getattr(module, "RegionsAndZonesBackend", None), "regions", None)
    if regions is None or not all(hasattr(r, "opt_in_status") for r in regions):
        sys.stderr.write("moto_ext: moto lacks RegionsAndZonesBackend.regions[].opt_in_status\n")
        sys.exit(3)
    for r in regions:
        if r.opt_in_status == "not-opted-in":
            r.opt_in_status = "opted-in"


def main(argv):
    install()
    install_imports()
    if os.environ.get("EC2AMI_MOTO_OPT_IN") == "all":
        opt_in_everywhere()
    sys.stderr.write(
        "moto_ext: moto patched (AMI state, deprecation, block public access, pagination, "
        "image lifecycle, Recycle Bin, Service Quotas)\n"
    )
    Moto.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
