"""rl.reward_model: a pretrained sequence-classification reward model served by the PM's scorer role in the trained
PM's place (rlaif/run/reward_model.py), without Ray: the scorer on a tiny reward model whose preference is known
(tests/reward_models.py), scoring over other heads, the checks that refuse a model that is not one, the config's
cross-field errors, and the stage before RL on in-process role handles (the trust gate's pass, stop and override).
The run through `rlaif train` is tests/test_reward_model_e2e.py."""

import json
import os
import random
from types import SimpleNamespace

import pytest
import torch

from rlaif.audit.integrity import FeedbackIntegrityError
from rlaif.config import ConfigError, load_config
from rlaif.data.human_labels import write_human_labels

from .conftest import REPO
from .reward_models import build_reward_model, words

PROMPT = "How do I bake bread?"


@pytest.fixture(scope="module")
def rm_path(tiny_path, tmp_path_factory) -> str:
    return build_reward_model(tiny_path, tmp_path_factory.mktemp("rm") / "acme-rm")


@pytest.fixture
def keep_threads():
    """PreferenceScorer gives its process a share of the cores (actors.group.use_cpu_threads): undo it here."""
    n, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    yield
    torch.set_num_threads(n)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp


def rm_config(rm_path: str, out, *more: str):
    return load_config(REPO / "configs/debug.yaml", [f"rl.reward_model={rm_path}", f"output_dir={out}",
                                                     "preference_model.model.dtype=float32",
                                                     "trust.accept_untrusted_feedback=false", *more])


def test_the_scorer_ranks_by_the_reward_model_in_its_own_template_and_normalises(rm_path, tmp_path, keep_threads):
    """The scorer role on a reward model whose preference is known (more good-word tokens: higher score). Bugs caught:
    the response the RM prefers getting the lower reward (a sign or pairing slip); the policy's or the PM's chat
    template instead of the RM's own; the score read at a padding position of a right-padded batch (each score must
    equal the RM's own forward on that sequence alone); normalisation not applied, or applied to the raw scores."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from actors.preference import PreferenceScorer
    from rlaif.data.loader import chat_ids

    cfg = rm_config(rm_path, tmp_path)
    scorer = PreferenceScorer(cfg, rm_path, 1.5, 2.0)
    tok = AutoTokenizer.from_pretrained(rm_path)
    good, bad = words(tok, True), words(tok, False)
    # its own template: "### user: ...", not the ChatML of the policy and the debug config's PM
    head = chat_ids(tok, [{"role": "user", "content": PROMPT}])
    prompt_ids, response_ids = scorer.encode(PROMPT, " ".join(good[:4]))
    assert prompt_ids == head and tok.decode(prompt_ids).startswith("### user: ")
    assert response_ids == tok.encode(" ".join(good[:4]), add_special_tokens=False) + [tok.eos_token_id]
    responses = [" ".join(good[:8]), " ".join(bad[:3]), " ".join(good[:2] + bad[:6]), " ".join(bad[:9])]
    raw = scorer.score({"prompt": [PROMPT] * 4, "response": responses}, normalize=False)
    assert raw[0] > raw[2] > raw[3] and raw[0] > raw[1]  # the good share orders them
    model = AutoModelForSequenceClassification.from_pretrained(rm_path).eval()
    for r, got in zip(responses, raw):
        ids = head + tok.encode(r, add_special_tokens=False) + [tok.eos_token_id]
        assert got == pytest.approx(model(input_ids=torch.tensor([ids])).logits[0, 0].item(), abs=1e-4)
    normed = scorer.score({"prompt": [PROMPT] * 4, "response": responses})
    assert normed == pytest.approx([(x - 1.5) / 2.0 for x in raw], abs=1e-5)


def test_scores_of_a_model_with_another_head_match_its_own_forward():
    """A reward model whose head is not `score` (an encoder's pooler and classifier; XLNet's summary of the last
    position, which ignores the attention mask) is scored by its own forward. Bugs caught: reading model.score
    (AttributeError), or the padding of a right-padded batch reaching a score (each must match the model on its
    sequence alone), also when the model's config names no pad id."""
    from transformers import BertConfig, BertForSequenceClassification, XLNetConfig, XLNetForSequenceClassification

    from rlaif.data.loader import pad_sequences
    from rlaif.models import scalar_scores

    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=16, num_labels=1))
    xlnet = XLNetForSequenceClassification(XLNetConfig(vocab_size=64, d_model=16, n_layer=1, n_head=2, d_inner=16,
                                                       num_labels=1))
    seqs = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15], [16, 17], [18, 19, 20, 21, 22, 23]]
    ids, attn, _ = pad_sequences([s[:1] for s in seqs], [s[1:] for s in seqs], 0)
    for model in (bert.eval(), xlnet.eval()):
        with torch.no_grad():
            alone = [model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs]
            assert scalar_scores(model, ids, attn).tolist() == pytest.approx(alone, abs=1e-5)
            model.config.pad_token_id = None
            assert scalar_scores(model, ids, attn).tolist() == pytest.approx(alone, abs=1e-5)


def test_a_model_that_is_not_a_one_label_reward_model_is_refused(rm_path, tiny_path, tmp_path):
    """Bugs caught: a causal LM taken as a reward model (its scalar head would be fresh random weights), and an RM
    with num_labels = 2 loaded with num_labels=1 forced (its head silently re-initialised); both must be refused
    before Ray starts, naming rl.reward_model. A resolved RM is its checked local folder."""
    from rlaif.models import ModelError, load_reward_model
    from rlaif.run.reward_model import resolve

    assert resolve(rm_config(rm_path, tmp_path)).rl.reward_model == rm_path
    with pytest.raises(ModelError, match=r"^rl\.reward_model: .*LlamaForCausalLM.*num_labels=1"):
        resolve(rm_config(tiny_path, tmp_path))
    two = build_reward_model(tiny_path, tmp_path / "two-labels", num_labels=2)
    with pytest.raises(ModelError, match=r"^rl\.reward_model: .*num_labels = 2.*allowed: num_labels = 1"):
        resolve(rm_config(two, tmp_path))
    with pytest.raises(ValueError, match="num_labels = 2"):
        load_reward_model(two)
    with pytest.raises(ModelError, match=r"^rl\.reward_model: model path not found"):
        resolve(rm_config(str(tmp_path / "nowhere"), tmp_path))
    with pytest.raises(ModelError, match=r"^rl\.reward_model_revision: 'v1' pins a Hub revision"):
        resolve(rm_config(rm_path, tmp_path, "rl.reward_model_revision=v1"))


@pytest.mark.parametrize("overrides, message", [
    (["rl.reward_model=acme/rm", "rl.use_preference_model=false"],
     r"^rl\.reward_model: 'acme/rm' is served in the preference model's place, but rl\.use_preference_model is false; "
     r"allowed: rl\.use_preference_model=true"),
    (["rl.reward_model=acme/rm", "preference_model.human_pairs=labels.jsonl"],
     r"^preference_model\.human_pairs: 'labels\.jsonl' trains the preference model.*allowed: empty"),
    (["rl.reward_model=acme/rm", "preference_model.lora.rank=8"],
     r"^preference_model\.lora\.rank: 8 puts adapters on the preference model to train.*allowed: 0"),
    (["rl.reward_model_revision=main"], r"^rl\.reward_model_revision: 'main' pins a revision of rl\.reward_model, "
                                        r"which is empty"),
])
def test_contradictory_reward_model_settings_are_config_errors(overrides, message):
    """Bugs caught: rl.reward_model silently ignored (use_preference_model=false), human pairs or PM adapters that
    would train nothing accepted, a revision pinned for no model; each error names its key and what is allowed."""
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "configs/debug.yaml", overrides)


def test_feedback_trains_no_preference_model_with_a_reward_model():
    """Bug caught: with rl.reward_model the AI labels train no PM, so alone they must not be gated (nor stop SL-CAI
    in the pre-check); with the labeler's rating as reward they still train it and stay gated."""
    from rlaif.audit.trust import feedback_trains

    assert feedback_trains(load_config(REPO / "configs/debug.yaml", ["rl.reward_model=acme/rm"])) == ""
    assert "rating" in feedback_trains(load_config(REPO / "configs/debug.yaml", [
        "rl.reward_model=acme/rm", "rl.use_labeler_rating=true"]))


# -- the stage before RL, on in-process role handles --

class Tracker:
    def __init__(self):
        self.logged, self.marks = {}, []

    def log(self, metrics, step):
        self.logged |= metrics

    def log_table(self, *args, **kwargs):
        pass

    def mark(self, summary, tags):
        self.marks.append((summary, tags))


class Roles:
    """The handles the stage uses: the engines sample `responses`, the PM slot hosts PreferenceScorers in-process; the
    labeler must not be called (its labels train nothing here)."""

    def __init__(self, cfg, responses):
        self.cfg, self.pm, self.started = cfg, None, []
        self.rollout = SimpleNamespace(generate=lambda prompts, n, seed: SimpleNamespace(
            texts={"response": responses[: len(prompts) * n]}))
        self.labeler = None

    def start_pm_scorers(self, path, mean, std):
        from actors.preference import PreferenceScorer

        self.started.append((path, mean, std))
        scorer = PreferenceScorer(self.cfg, path, mean, std)
        self.pm = SimpleNamespace(actors=[SimpleNamespace(score=SimpleNamespace(remote=scorer.score))])

    @staticmethod
    def get(refs, what):
        return refs


def stage_inputs(rm_path, tmp_path, agree: bool, *more):
    from transformers import AutoTokenizer

    from rlaif.data.loader import PromptLoader
    from rlaif.data.splits import plan_prompts

    tok = AutoTokenizer.from_pretrained(rm_path)
    good, bad, rng = words(tok, True), words(tok, False), random.Random(0)
    rows = []
    for i in range(16):  # the good response in either slot; the humans prefer it (agree) or the other
        g, b = " ".join(rng.sample(good, 6)), " ".join(rng.sample(bad, 6))
        first = rng.random() < 0.5
        p_good = 1.0 if agree else 0.0
        rows.append({"id": f"h{i}", "prompt": PROMPT, "response_a": g if first else b,
                     "response_b": b if first else g, "p_a": p_good if first else 1 - p_good})
    human = write_human_labels(tmp_path / "human.jsonl", rows)
    cfg = rm_config(rm_path, tmp_path / "run", f"labeler.human_eval={human}", "preference_model.label_prompts=4", *more)
    responses = [" ".join(rng.sample(good + bad, 5)) for _ in range(8)]
    return cfg, Roles(cfg, responses), PromptLoader(plan_prompts(cfg, ("rl",)).rl.train, cfg.seed), responses


def test_the_stage_measures_the_reward_model_and_the_gate_passes_it(rm_path, tmp_path, keep_threads, caplog):
    """Human labels that agree with the reward model: the gate passes it, no labeler call and no PM training, and
    the normalisation is the mean and std of its raw scores on the sampled responses. Bugs caught: the AI labeler
    still labelling (and gating) labels that train nothing; normalisation from anything but the sampled responses;
    the accuracy measured on the wrong side of the pairs; a dict on the console instead of one sentence."""
    import logging
    import statistics

    from rlaif.run.reward_model import reward_model_stage

    cfg, roles, loader, responses = stage_inputs(rm_path, tmp_path, agree=True)
    tracker = Tracker()
    with caplog.at_level(logging.INFO, logger="rlaif"):
        path, (mean, std), record = reward_model_stage(cfg, roles, loader, tracker)
    assert path == rm_path and record.status == "trusted" and roles.started == [(rm_path, 0.0, 1.0)]
    (check,) = record.checks
    assert (check.name, check.value, check.n) == ("rm_human_accuracy", 1.0, 16)
    assert check.key == "trust.min_pm_human_accuracy"
    prompts = [p for p in tracker_prompts(cfg) for _ in range(2)]
    raw = roles.pm.actors[0].score.remote({"prompt": prompts, "response": responses}, False)
    assert mean == pytest.approx(statistics.mean(raw)) and std == pytest.approx(statistics.stdev(raw))
    assert tracker.logged["rm/human_accuracy"] == 1.0 and tracker.logged["rm/score_mean"] == mean
    trust = json.loads((tmp_path / "run" / "feedback" / "trust.json").read_text())
    assert trust["status"] == "trusted" and "reward model (rl.reward_model) accuracy" in trust["summary"]
    assert (tmp_path / "run" / "feedback" / "reward_model.html").is_file()
    assert not (tmp_path / "run" / "preference_model").exists()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reward model ")]
    assert f"reward model {rm_path}: accuracy on 16 held-out human pairs 1.00 [0.81, 1.00]; trust gate: TRUSTED" \
        in lines


def tracker_prompts(cfg):
    """The prompts the stage samples: the loader's first preference_model.label_prompts, as a fresh loader gives."""
    from rlaif.data.loader import PromptLoader
    from rlaif.data.splits import plan_prompts

    return [p.text for p in PromptLoader(plan_prompts(cfg, ("rl",)).rl.train, cfg.seed).next(
        cfg.preference_model.label_prompts)]


def test_a_reward_model_that_disagrees_with_the_humans_stops_the_run_unless_accepted(rm_path, tmp_path,
                                                                                      keep_threads):
    """Human labels that contradict the reward model: the gate stops the run (exit 3's error) with its figure, bar
    and the two ways on, feedback/trust.json says failed; with trust.accept_untrusted_feedback it goes on, UNTRUSTED.
    Bugs caught: a reward model that no gate checks; a failure that does not stop; an override not marked."""
    from rlaif.run.reward_model import reward_model_stage

    cfg, roles, loader, _ = stage_inputs(rm_path, tmp_path, agree=False)
    with pytest.raises(FeedbackIntegrityError) as info:
        reward_model_stage(cfg, roles, loader, Tracker())
    message = str(info.value)
    assert "reward model (rl.reward_model) accuracy on held-out human pairs: 0.00 [" in message
    assert "FAILED" in message and "trust.min_pm_human_accuracy" in message
    assert "--accept-untrusted-feedback" in message and "reward_model.html" in message
    assert json.loads((tmp_path / "run" / "feedback" / "trust.json").read_text())["status"] == "failed"

    cfg, roles, loader, _ = stage_inputs(rm_path, tmp_path / "accepted", False, "trust.accept_untrusted_feedback=true")
    tracker = Tracker()
    _, _, record = reward_model_stage(cfg, roles, loader, tracker)
    assert record.status == "untrusted" and record.accepted
    assert tracker.marks[-1][1] == ["untrusted-feedback"]


def test_the_red_lm_training_config_drops_the_reward_model(tmp_path):
    """`rlaif red-team --method rl` trains its red LM on a rule-based reward with no preference model. Bug caught: a
    run config naming rl.reward_model made that derived config contradictory (a ConfigError at red-team time)."""
    from rlaif.run.red_rl import rl_config

    cfg = load_config(REPO / "configs/debug.yaml", ["rl.reward_model=acme/rm", "rl.reward_model_revision=v2"])
    red = rl_config(cfg, "builtin:tiny-llama", tmp_path)
    assert (red.rl.reward_model, red.rl.reward_model_revision, red.rl.use_preference_model) == ("", "", False)


def test_a_hub_id_resolves_to_its_cached_snapshot_and_is_named_by_it(rm_path, tmp_path, monkeypatch):
    """rl.reward_model as a Hub id, offline from a Hub cache: resolved like *.model.path to the snapshot (pinned by
    rl.reward_model_revision), named org/name@commit on the console. Bugs caught: a Hub id not resolved (the actors
    would each download it), the revision key ignored or misnamed in its error."""
    from rlaif.models import ModelError
    from rlaif.run.reward_model import display_name, resolve

    from .test_models_hub import MAIN, OLD, hub_cache

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = hub_cache(tmp_path / "hub", rm_path, "acme/rm")
    got = resolve(rm_config("acme/rm", tmp_path / "run")).rl
    assert (got.reward_model, got.reward_model_revision) == (str(repo / "snapshots" / MAIN), "")
    assert display_name(got.reward_model) == f"acme/rm@{MAIN[:8]}"
    assert resolve(rm_config("acme/rm", tmp_path / "run", "rl.reward_model_revision=v1")).rl.reward_model == \
        str(repo / "snapshots" / OLD)
    with pytest.raises(ModelError, match=r"^rl\.reward_model_revision: 'acme/rm' at revision 'v9' is not in"):
        resolve(rm_config("acme/rm", tmp_path / "run", "rl.reward_model_revision=v9"))
