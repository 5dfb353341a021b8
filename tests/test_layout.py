"""Paths: DESIGN.md's slug, and a property test that no group name escapes the prefix."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault_zpa import layout
from vault_zpa.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("USA-Connector-Group", "USA-Connector-Group"),
        ("NY Edges", "NY-Edges"),
        ("a  /  b", "a-b"),
        ("--x--", "x"),
        ("..", "group-42"),
        (".", "group-42"),
        ("", "group-42"),
        ("%2F..%2F", "2F..-2F"),
        ("ü", "group-42"),
        ("v1.2_beta", "v1.2_beta"),
    ],
)
def test_slug(name: str, expected: str) -> None:
    """Runs outside [A-Za-z0-9._-] become one '-', trimmed; empty/./.. fall back to the id."""
    assert layout.group_slug(name, "42") == expected


def test_long_names_stay_distinct_and_bounded() -> None:
    """Two 10 kB names that differ only at the end get different, bounded slugs."""
    a, b = "x" * 10_000 + "a", "x" * 10_000 + "b"
    sa, sb = layout.group_slug(a, "1"), layout.group_slug(b, "2")
    assert sa != sb
    assert len(sa) <= layout.MAX_SEGMENT


hostile = st.one_of(
    st.text(max_size=300),
    st.sampled_from(
        ["..", ".", "/", "../../etc", "%2F..%2F", "\x00", "\n", "_vault-zpa", "a/../../b", "\\..\\"]
    ),
    st.text(alphabet="./%\\-_ \x00\u202e", max_size=50),
    st.just("y" * 10_000),
)


@settings(max_examples=400, deadline=None)
@given(
    name=hostile,
    group_id=hostile,
    tenant=st.one_of(st.none(), hostile),
    template=st.sampled_from(
        [
            layout.DEFAULT_TEMPLATE,
            "{prefix}/{group}",
            "{prefix}/{microtenant_id}/{association_type}/{group_id}",
            "{prefix}/x/{group}-{group_id}",
        ]
    ),
)
def test_no_group_name_escapes_the_prefix(
    name: str, group_id: str, tenant: str | None, template: str
) -> None:
    """Whatever ZPA sends as a name or id, the path is `zpa/` plus safe segments, or refused."""
    try:
        path = layout.secret_path(
            template,
            prefix="zpa",
            association_type="CONNECTOR_GRP",
            group_name=name,
            group_id=group_id,
            microtenant_id=tenant,
        )
    except ConfigError:
        return  # refused (e.g. would land in _vault-zpa): never written
    assert path.startswith("zpa/")
    segments = path.split("/")[1:]
    assert segments
    for segment in segments:
        assert segment not in ("", ".", "..")
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in segment)
        assert len(segment) <= 2 * layout.MAX_SEGMENT + 1
    assert segments[0] != layout.STATE_DIR


@pytest.mark.parametrize(
    "template",
    [
        "{group}",
        "{prefix}/{nope}",
        "{prefix}/{association_type}",
        "{prefix}/{group",
        "/{prefix}/{group}",
    ],
)
def test_bad_templates_are_config_errors(template: str) -> None:
    """A template must start with {prefix}/, name the group, and use known placeholders."""
    with pytest.raises(ConfigError):
        layout.validate_template(template)
