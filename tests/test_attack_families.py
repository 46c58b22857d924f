"""Attack families are one table (advtui.core.attack_specs.FAMILIES): the grammar, the order
results are shown in, the help text and the AutoAttack set all come from its rows."""

from __future__ import annotations

import pytest

from advtui.core.attack_specs import (
    AUTOATTACK_FAMILIES, FAMILIES, FAMILY_ORDER, KNOWN_ATTACKS, AttackSpecError, parse_attack,
)


def _example(usage: str) -> str:
    """A spec written as the help text's usage says: K steps as 7, a source as run abc123."""
    return usage.replace("-K", "-7").replace("[:RUN]", "").replace(":RUN", ":abc123")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_row_parses_as_its_help_text_writes_it(name):
    spec = parse_attack(_example(FAMILIES[name].usage))
    assert spec.family == ("transfer-pgd" if name == "transfer" else name)
    assert FAMILIES[name].usage in KNOWN_ATTACKS.split(", ")


def test_the_order_and_the_autoattack_set_follow_the_table():
    assert FAMILY_ORDER == tuple(n for n in FAMILIES if n != "transfer")
    assert AUTOATTACK_FAMILIES == ("apgd-ce", "apgd-t", "square", "aa")


def test_a_family_outside_the_table_is_one_error_naming_every_family():
    with pytest.raises(AttackSpecError) as caught:
        parse_attack("mart-10")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("unknown attack 'mart-10': use one of ")
    assert all(family.usage in message for family in FAMILIES.values())
