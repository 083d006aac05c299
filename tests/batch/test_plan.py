from __future__ import annotations

import json

from mcmdpo.batch.artifacts import content_hash
from mcmdpo.batch.plan import Plan, build_plan
from mcmdpo.batch.recipe import load_recipe
from tests.helpers.recipes import BASE


def plan_of(write_recipe, body=BASE, overrides=()):
    return build_plan(load_recipe(write_recipe(body), overrides))


def ids(plan, stage):
    return [t.task_id for t in plan.stage(stage).tasks]


def test_dag_order_tasks_and_ids(write_recipe):
    plan = plan_of(write_recipe)
    assert [s.name for s in plan.stages] == ["count", "sum"]
    assert plan.stage("sum").after == ["count"]
    count = plan.stage("count")
    assert [t.params for t in count.tasks] == [{"shard": i} for i in range(4)]
    inst = count.instances[0]
    # the id is the hash of the resolved spec + reads + seed + upstream instances, independently recomputed
    key = {"stage": "count", "version": 1, "spec": inst.spec, "reads": {}, "seed": 0, "upstream": {}}
    assert inst.instance_id == content_hash(key)
    assert count.tasks[2].task_id == content_hash({"instance": inst.instance_id, "params": {"shard": 2}})
    assert len(set(ids(plan, "count"))) == 4


def test_ids_are_stable_and_change_downstream_only(write_recipe):
    a = plan_of(write_recipe)
    assert ids(a, "count") == ids(plan_of(write_recipe), "count")
    b = plan_of(write_recipe, overrides=["sum.scale=9"])
    assert ids(a, "count") == ids(b, "count") and ids(a, "sum") != ids(b, "sum")
    c = plan_of(write_recipe, overrides=["count.steps=4"])
    assert set(ids(a, "count")).isdisjoint(ids(c, "count")) and ids(a, "sum") != ids(c, "sum")
    d = plan_of(write_recipe, overrides=["run.seed=1"])
    assert set(ids(a, "count")).isdisjoint(ids(d, "count"))


def test_sweep_shares_unaffected_instances(write_recipe):
    plan = plan_of(write_recipe, BASE + '\n[sweep]\n"sum.scale" = [1, 2, 3]\n')
    assert len(plan.stage("count").instances) == 1
    assert len(plan.stage("count").instances[0].points) == 3
    sums = plan.stage("sum").instances
    assert [i.spec["scale"] for i in sums] == [1, 2, 3]
    assert all(i.upstream == {"count": plan.stage("count").instances[0].instance_id} for i in sums)
    swept = plan_of(write_recipe, BASE + '\n[sweep]\n"count.steps" = [1, 2]\n')
    assert len(swept.stage("count").instances) == 2 and len(swept.stage("sum").instances) == 2
    assert len(swept.stage("count").tasks) == 8


def test_plan_json_round_trip(write_recipe):
    plan = plan_of(write_recipe, BASE + '\n[sweep]\n"sum.scale" = [1, 2]\n')
    again = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again == plan


def test_absent_stage_is_not_run(write_recipe):
    body = BASE.split("[sum]")[0]
    plan = plan_of(write_recipe, body)
    assert [s.name for s in plan.stages] == ["count"]


def test_resources_profile_then_overrides(write_recipe):
    plan = plan_of(
        write_recipe, BASE + '\n[cluster]\nprofile = "a100"\n[cluster.resources.sum]\ntimeout_min = 5\n'
    )
    assert plan.stage("count").resources["cpus_per_task"] == 8  # a100 [defaults]
    assert plan.stage("sum").resources["timeout_min"] == 5
    assert plan.stage("count").resources["timeout_min"] == 240
