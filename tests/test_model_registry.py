"""ModelRegistry on the real Anvil: models, shard assignments, and every custom error."""

import pytest
from eth_utils import keccak

from shardnet.chain import dev_account
from tests.helpers import reverts


@pytest.fixture
def models(world):
    return world.contracts.models


def test_register_and_deprecate(world, models):
    owner = dev_account(14)
    count = models.model_count()
    with reverts("AccessControlUnauthorizedAccount", account=owner.address):  # publishing is role-gated
        models.register_model("spam", "QmSpam", 14, keccak(text="x"), 7, account=owner)
    assert models.model_count() == count
    models.grant_publisher(owner.address, account=world.admin)
    model_id = models.register_model("gpt2", "QmManifest", 14, keccak(text="x"), 7, account=owner)
    m = models.model(model_id)
    assert (m.owner, m.block_count, m.price_per_block, m.manifest_cid, m.name, m.deprecated) == (
        owner.address,
        14,
        7,
        "QmManifest",
        "gpt2",
        False,
    )
    assert m.blocks_root == keccak(text="x")
    models.deprecate_model(model_id, account=owner)
    assert models.model(model_id).deprecated
    with reverts("ModelIsDeprecated", modelId=model_id):
        models.deprecate_model(model_id, account=owner)
    with reverts("ModelIsDeprecated", modelId=model_id):
        world.post(model_id, dev_account(15), 10**15)


def test_assign_confirm_release_and_query(world, models):
    nodes = world.register_nodes(3)
    model_id = world.register_model(6)
    world.assign_even(model_id, nodes, 6)
    a = models.assignment(model_id, nodes[1].address)
    assert (a.start, a.end, a.confirmed, a.assigned_by) == (2, 4, True, world.coordinator.address)
    assert models.nodes_for_block(model_id, 3) == [nodes[1].address]
    # a replica for blocks [2, 6), not yet confirmed: not listed until it confirms
    models.assign_shard(model_id, nodes[0].address, 2, 6, account=world.coordinator)
    assert models.nodes_for_block(model_id, 3) == [nodes[1].address]
    models.confirm_shard(model_id, account=nodes[0])
    assert sorted(models.nodes_for_block(model_id, 3)) == sorted([nodes[0].address, nodes[1].address])
    models.release_shard(model_id, nodes[1].address, account=nodes[1])
    assert models.nodes_for_block(model_id, 3) == [nodes[0].address]
    models.release_shard(model_id, nodes[0].address, account=world.coordinator)
    assert models.nodes_for_block(model_id, 3) == []
    assert len(models.assigned_nodes(model_id)) == 3


def test_register_errors(world, models):
    with reverts("InvalidBlockCount", blockCount=0):
        models.register_model("m", "Qm", 0, b"\0" * 32, 1, account=world.admin)
    with reverts("EmptyManifestCid"):
        models.register_model("m", "", 4, b"\0" * 32, 1, account=world.admin)


def test_owner_and_unknown_errors(world, models):
    model_id = world.register_model(4)
    with reverts("NotModelOwner", modelId=model_id, caller=dev_account(14).address):
        models.deprecate_model(model_id, account=dev_account(14))
    with reverts("UnknownModel", modelId=999):
        models.deprecate_model(999, account=dev_account(14))


def test_assignment_errors(world, models):
    [node] = world.register_nodes(1)
    model_id = world.register_model(4)
    with reverts("InvalidSpan", start=2, end=2, blockCount=4):
        models.assign_shard(model_id, node.address, 2, 2, account=world.coordinator)
    with reverts("InvalidSpan", start=0, end=5):
        models.assign_shard(model_id, node.address, 0, 5, account=world.coordinator)
    with reverts("NodeNotActive", node=dev_account(16).address):
        models.assign_shard(model_id, dev_account(16).address, 0, 4, account=world.coordinator)
    with reverts("AccessControlUnauthorizedAccount", account=node.address):
        models.assign_shard(model_id, node.address, 0, 4, account=node)
    with reverts("NoAssignment", node=node.address):
        models.confirm_shard(model_id, account=node)
    with reverts("NoAssignment", node=node.address):
        models.release_shard(model_id, node.address, account=node)
    models.assign_shard(model_id, node.address, 0, 4, account=world.coordinator)
    models.confirm_shard(model_id, account=node)
    with reverts("AlreadyConfirmed", node=node.address):
        models.confirm_shard(model_id, account=node)
    with reverts("NotNodeOrCoordinator", caller=dev_account(16).address):
        models.release_shard(model_id, node.address, account=dev_account(16))
