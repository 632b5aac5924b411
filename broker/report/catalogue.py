"""The controls the broker supports, and what it enforces for each: the single source.

Why here and not in a template: the sentence an auditor reads under "enforces" must be the
broker's own claim, reviewed with the code that makes it true, and the same in the JSON,
the HTML page and docs/report.md (tests/unit/test_report.py checks the docs name every
control listed here). `evidence` names the function of broker.report.evidence that
computes the control's figures, so adding a control is one entry here and one function.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Control:
    """One control: NIST SP 800-53 id, its title, the broker's one-sentence claim."""

    id: str
    title: str
    enforces: str
    evidence: str  # the name of the function in broker.report.evidence


CATALOGUE: tuple[Control, ...] = (
    Control(
        "AC-2",
        "Account management",
        "Only enabled Active Directory accounts in a policy-mapped group can hold a role, and "
        "every grant is re-checked and revoked when the directory disables, expires or removes "
        "its holder.",
        "account_management",
    ),
    Control(
        "AC-2(2)",
        "Automated temporary and emergency account management",
        "Every grant carries a signed end time enforced by the node itself, and the reaper "
        "removes its sudo rule once that time has passed.",
        "time_boxes",
    ),
    Control(
        "AC-6",
        "Least privilege",
        "Privilege is granted per person, per node and per role (root or a named command "
        "set), and a node refuses job launches while its user holds root without the "
        "role's workloads right.",
        "least_privilege",
    ),
    Control(
        "AC-6(9)",
        "Log use of privileged functions",
        "Every elevated sudo is recorded on the log server and every grant, refusal and "
        "elevated session is an audit event.",
        "privileged_use",
    ),
    Control(
        "AC-10",
        "Concurrent session control",
        "The node's PAM module counts a user's open elevated sessions under a lock and "
        "refuses one beyond the grant's max_sessions.",
        "concurrent_sessions",
    ),
    Control(
        "CM-11",
        "User-installed software",
        "Software installed with elevated rights is visible in the session recordings, "
        "attributed to the grant it ran under.",
        "software_installs",
    ),
    Control(
        "IA-2(1)",
        "Multi-factor authentication to privileged accounts",
        "An elevation to a role with mfa = true is issued only after a TOTP code is "
        "accepted for the requester in the same request.",
        "mfa_elevations",
    ),
    Control(
        "IA-2(8)",
        "Replay-resistant authentication",
        "A TOTP time step is accepted once per account across processes and restarts, and "
        "repeated failures lock the factor.",
        "mfa_replays",
    ),
    Control(
        "IA-5",
        "Authenticator management",
        "Service-account keytabs are rotated on the policy's schedule, staged on every node "
        "before AD changes, and verified with a fresh ticket afterwards.",
        "keytab_rotation",
    ),
    Control(
        "SC-8",
        "Transmission confidentiality and integrity",
        "The directory is read over LDAPS or StartTLS with GSSAPI, nodes are reached over SSH "
        "with pinned host keys, and recordings travel over mutual TLS to the log server.",
        "transports",
    ),
    Control(
        "AU-2",
        "Event logging",
        "Every state change and every refusal is an audit event written in the same "
        "transaction as the change.",
        "event_logging",
    ),
    Control(
        "AU-9(3)",
        "Cryptographic protection of audit information",
        "The audit events form a SHA-256 hash chain whose head is sealed by Ed25519-signed "
        "checkpoints kept outside the database.",
        "chain_protection",
    ),
    Control(
        "AU-10",
        "Non-repudiation",
        "Each finished recording's SHA-256 is written into the audit chain in the same "
        "transaction as its index row.",
        "recording_digests",
    ),
)


def control(control_id: str) -> Control:
    """The catalogue entry of `control_id` (KeyError for an unknown id: a programming error)."""
    for entry in CATALOGUE:
        if entry.id == control_id:
            return entry
    raise KeyError(control_id)
