"""The one layer rule: the SAE's own layer, an explicit one only for an SAE without, always a held one."""

from __future__ import annotations

import pytest

from thinklens.errors import ThinklensError
from thinklens.sae.layer import resolve_sae_layer


def test_the_sae_layer_wins_and_may_be_restated():
    # The store holds layers 1 and 3; the SAE reads layer 3.
    assert resolve_sae_layer(3, [1, 3], None) == 3
    assert resolve_sae_layer(3, [1, 3], 3) == 3  # an override that agrees is fine


def test_an_sae_without_a_layer_takes_the_explicit_one():
    assert resolve_sae_layer(None, [1, 3], 1) == 1
    assert resolve_sae_layer(None, [3, 1], 3) == 3


def test_an_sae_without_a_layer_and_no_override_is_never_guessed():
    # Before the rule, index and shift silently took layers[0] = 1 here.
    with pytest.raises(ThinklensError) as error:
        resolve_sae_layer(None, [3, 1], None, sae="the SAE in runs/x/sae")
    assert str(error.value) == (
        "the SAE in runs/x/sae names no layer: pass --layer L (layers in the activations: 1, 3)"
    )


def test_an_override_that_contradicts_the_sae_is_refused():
    with pytest.raises(ThinklensError, match=r"^the SAE reads layer 3 but layer 1 was asked: drop the layer setting"):
        resolve_sae_layer(3, [1, 3], 1)


def test_a_layer_the_store_does_not_hold_names_the_held_ones():
    with pytest.raises(ThinklensError) as error:
        resolve_sae_layer(5, [1, 3], None)
    assert str(error.value) == "layer 5 is not in the activations (layers there: 1, 3): harvest layer 5 or use one of those"
    with pytest.raises(ThinklensError, match=r"layer 7 is not in the model m \(layers there: 0\.\.5\): use one of those$"):
        resolve_sae_layer(None, range(6), 7, holder="the model m", harvestable=False)


def test_train_uses_the_rule_to_validate_its_choice():
    # train: no SAE yet, the chosen (or default first) harvested layer is the override.
    assert resolve_sae_layer(None, [1, 3], 1) == 1
    with pytest.raises(ThinklensError, match=r"layer 2 is not in the activations \(layers there: 1, 3\)"):
        resolve_sae_layer(None, [1, 3], 2)
