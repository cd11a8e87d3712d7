"""The secured broker's ACLs: what the controller and the stand-ins are granted, and granting it.

The controller's set (``controller_acls``) is the README's table (Secured Kafka) and
``k8s/secured/acls.sh``: ``tests/integration/test_secured.py`` runs a controller with
exactly these and nothing more, and checks that each is needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from tests.integration.harness import Wiring
from tests.kafka import client


@dataclass(frozen=True)
class Acl:
    """Allow ``operation`` on the ``resource`` named ``name``.

    ``resource``: ``Topic``, ``Group``, ``TransactionalId`` or ``Cluster``.
    """

    resource: str
    name: str
    operation: str
    #: Every resource whose name begins with ``name`` (else the one named ``name``).
    prefixed: bool = False

    def __str__(self) -> str:
        return f"{self.operation} on {self.resource}:{self.name}{'*' if self.prefixed else ''}"

    def binding(self, principal: str) -> AclBinding:
        """The admin API's binding of this ACL for ``principal`` (``User:<name>``)."""
        return AclBinding(
            ResourceType[_RESOURCE[self.resource]], self.name,
            ResourcePatternType.PREFIXED if self.prefixed else ResourcePatternType.LITERAL,
            principal, "*", AclOperation[self.operation.upper()], AclPermissionType.ALLOW,
        )  # fmt: skip


_RESOURCE = {"Topic": "TOPIC", "Group": "GROUP", "TransactionalId": "TRANSACTIONAL_ID",
             "Cluster": "BROKER"}  # fmt: skip


def transactional_id(wiring: Wiring) -> str:
    """The controller's default ``KAFKA_TRANSACTIONAL_ID`` for the wiring's topics."""
    return wiring.extra.get("KAFKA_TRANSACTIONAL_ID",
                            f"rtcef-controller.{wiring.commands}.{wiring.sync}")  # fmt: skip


def controller_acls(wiring: Wiring) -> list[Acl]:
    """Everything the controller needs, and nothing more (README, Secured Kafka)."""
    return [
        Acl("Topic", wiring.instructions, "Read"),
        Acl("Topic", wiring.reports, "Read"),
        Acl("Topic", wiring.reports, "Write"),
        Acl("Topic", wiring.commands, "Read"),
        Acl("Topic", wiring.commands, "Write"),
        Acl("Topic", wiring.sync, "Read"),
        Acl("Topic", wiring.sync, "Write"),
        Acl("Topic", wiring.dead_letters, "Write"),
        Acl("TransactionalId", transactional_id(wiring), "Write"),
        Acl("Group", f"{transactional_id(wiring)}.", "Describe", prefixed=True),
    ]


def factory_acls(wiring: Wiring) -> list[Acl]:
    """The factory stand-in's: read commands, write reports."""
    return [
        Acl("Topic", wiring.commands, "Read"),
        Acl("Topic", wiring.reports, "Write"),
        Acl("Group", "stand-in", "Describe"),
    ]


def grant(bootstrap: str, user: str, acls: Iterable[Acl]) -> None:
    """Create ``acls`` for ``User:<user>`` (as the harness's admin) and wait for each."""
    admin = client.admin(bootstrap)
    for future in admin.create_acls([acl.binding(f"User:{user}") for acl in acls]).values():
        future.result(timeout=30)


def revoke(bootstrap: str, user: str, acl: Acl) -> None:
    """Delete one ACL of ``User:<user>``."""
    binding = acl.binding(f"User:{user}")
    exact = AclBindingFilter(binding.restype, binding.name, binding.resource_pattern_type,
                             binding.principal, binding.host, binding.operation,
                             binding.permission_type)  # fmt: skip
    admin = client.admin(bootstrap)  # must outlive the futures: destroying it cancels them
    for future in admin.delete_acls([exact]).values():
        assert future.result(timeout=30), f"no such ACL: {acl}"


def revoke_all(bootstrap: str, user: str) -> None:
    """Delete every ACL of ``User:<user>``."""
    admin = client.admin(bootstrap)
    everything = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{user}", None,
        AclOperation.ANY, AclPermissionType.ANY,
    )  # fmt: skip
    for future in admin.delete_acls([everything]).values():
        future.result(timeout=30)
