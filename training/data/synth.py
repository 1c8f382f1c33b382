"""Synthetic multimodal catalogues with planted redundant, unique and synergistic information.

Why: MRdIB claims to keep the information that is redundant across modalities, unique to one, and
synergistic (only present in two modalities together). Real datasets do not tell us which is which;
here we plant each kind as explicit latent factors, generate interactions from user preferences over
them, and save the factor values so that diagnostics (linear probes) can check what a model learned.

Item factors (all saved to ``factors.npz``, rows = item rows):

``redundant``               [n_items, n_redundant]  N(0, 1); every modality carries them.
``unique_<m>``              [n_items, n_unique]     N(0, 1); only modality m carries them.
``synergy``                 [n_items, n_synergy]    +-1; synergy factor k = carrier_a * carrier_b (XOR of two
                                                    random signs), where modality a carries one sign and
                                                    modality b the other. Each sign alone is independent of
                                                    the product, so NO function of one modality predicts it;
                                                    the pair does through a product.
``synergy_carrier_<m>``     [n_items, n_synergy]    the +-1 sign modality m carries for each synergy factor
                                                    (0 where m is not one of that factor's pair).
``noise_<m>``               [n_items, n_noise]      N(0, 1) latent dims of modality m no user cares about.
``popularity``              [n_items]               the item's log-popularity prior (power law in a random rank).
``user_pref_redundant``     [n_users, n_redundant]  each user's preference weights (likewise ``user_pref_unique``
                                                    [n_users, n_modalities * n_unique] in modality order and
                                                    ``user_pref_synergy`` [n_users, n_synergy]), for oracle checks.
``synergy_pairs``           [n_synergy, 2]          modality indices (in ``modalities`` order) of each pair.
``modalities``              [n_modalities]          modality names (unicode array).

Features: modality m's latent vector [redundant, unique_m, carriers of m, noise_m] is mapped to
``dims[m]`` dimensions by a random Gaussian matrix (a random rotation/embedding that hides which
coordinate is which), plus isotropic Gaussian noise of std ``feature_noise``.

Interactions: user u has Gaussian preference vectors over the redundant, unique and synergy factors;
the score of item i is ``w_r <p_r, r_i> + w_u <p_u, u_i> + w_s <p_s, s_i>`` (each block scaled to unit
variance) plus ``popularity_weight * popularity_i``; each user draws her items without replacement with
probability proportional to ``exp(score / temperature)`` (Gumbel top-k). Splits follow MMRec's rule.

Display metadata (item_meta.jsonl): a generated ``title`` ("Quiet Amber Lantern") and a ``category`` per
item. The category is the item's strongest redundant factor, so items of one category share a taste users
have, which makes a demo's recommendations look sensible. Names come from their own random stream: they
never change the features or the interactions of a seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.data.dataset import InteractionDataset
from training.data.mmrec import write_mmrec
from training.data.split import mmrec_split

DEFAULT_MODALITY_NAMES = ("image", "text", "audio")
DEFAULT_DIMS = (64, 48, 32)
Preset = Literal["small", "baby", "synergy-heavy", "synergy-sparse"]
#: word lists of the generated item names (title = adjective colour noun; category = factor's name)
_ADJECTIVES = (
    "Quiet", "Bright", "Swift", "Gentle", "Bold", "Tiny", "Grand", "Lucky", "Misty", "Sunny", "Rustic", "Silent",
    "Golden", "Wild", "Cozy", "Classic", "Clever", "Hidden", "Happy", "Ancient", "Modern", "Brave", "Calm", "Noble",
)  # fmt: skip
_COLOURS = ("Amber", "Crimson", "Azure", "Olive", "Ivory", "Coral", "Indigo", "Scarlet", "Jade", "Copper",
            "Silver", "Violet", "Teal", "Saffron", "Slate", "Rose")  # fmt: skip
_NOUNS = (
    "Lantern", "Kettle", "Compass", "Blanket", "Notebook", "Backpack", "Teapot", "Puzzle", "Guitar", "Sneaker",
    "Umbrella", "Candle", "Mug", "Scarf", "Telescope", "Drone", "Planter", "Clock", "Journal", "Bicycle", "Kite",
    "Camera", "Pillow", "Toolkit",
)  # fmt: skip
_CATEGORIES = ("Home", "Outdoors", "Toys", "Books", "Music", "Sports", "Kitchen", "Garden", "Travel",
               "Electronics", "Fashion", "Beauty")  # fmt: skip
_NAME_STREAM = 0x4E414D45  # spawn key of the names' random stream ("NAME")
_USER_CHUNK = 512  # users scored at once: bounds memory at _USER_CHUNK * n_items floats


def default_modalities(n: int) -> list[str]:
    """Names for n modalities: image, text, audio, then m3, m4, ..."""
    return [DEFAULT_MODALITY_NAMES[k] if k < len(DEFAULT_MODALITY_NAMES) else f"m{k}" for k in range(n)]


class SynthConfig(BaseModel):
    """Every knob of the generator; the defaults make a catalogue a test trains on in seconds."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("synth", pattern=r"^[A-Za-z0-9_\-]+$", description="Stem of the written <name>.inter.")
    seed: int = 0
    n_users: int = Field(600, ge=1)
    n_items: int = Field(400, ge=2)
    n_interactions: int = Field(25_000, ge=1, description="Total interactions over all splits.")
    min_interactions_per_user: int = Field(5, ge=1, description="Every user gets at least this many (5-core).")
    activity_sigma: float = Field(0.8, ge=0, description="Log-normal spread of user activity.")
    modalities: list[str] = Field(default_factory=lambda: default_modalities(2), min_length=1)
    dims: list[int] | None = Field(None, description="Feature dimension per modality; default 64, 48, 32, 32, ...")
    n_redundant: int = Field(4, ge=0)
    n_unique: int = Field(3, ge=0, description="Unique factors per modality.")
    n_synergy: int = Field(2, ge=0)
    n_noise: int = Field(4, ge=0, description="Irrelevant latent dims per modality.")
    redundant_weight: float = Field(1.0, ge=0)
    unique_weight: float = Field(1.0, ge=0)
    synergy_strength: float = Field(1.0, ge=0, description="Weight of the synergy factors in user preferences.")
    popularity_exponent: float = Field(1.0, ge=0, description="Zipf exponent of the item popularity prior.")
    popularity_weight: float = Field(0.5, ge=0)
    temperature: float = Field(0.5, gt=0, description="Lower = users follow their preferences more strictly.")
    feature_noise: float = Field(0.1, ge=0, description="Std of isotropic noise added to the features.")

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        m = len(self.modalities)
        if len(set(self.modalities)) != m:
            raise ValueError(f"modality names must be unique, got {self.modalities}")
        for name in self.modalities:
            if not name.replace("_", "").isalnum():
                raise ValueError(f"modality name {name!r} must be alphanumeric (it becomes a file name)")
        if self.dims is None:
            self.dims = [DEFAULT_DIMS[k] if k < len(DEFAULT_DIMS) else 32 for k in range(m)]
        if len(self.dims) != m:
            raise ValueError(f"dims has {len(self.dims)} entries for {m} modalities")
        for name, d in zip(self.modalities, self.dims, strict=True):
            k = self.latent_size(name)
            if d < k:
                raise ValueError(f"dims for {name!r} is {d}, below its {k} latent factors (they would be lost)")
        if self.n_synergy and m < 2:
            raise ValueError("synergy factors need at least two modalities (set n_synergy=0)")
        if self.n_interactions < self.min_interactions_per_user * self.n_users:
            raise ValueError(
                f"n_interactions={self.n_interactions} < min_interactions_per_user * n_users "
                f"= {self.min_interactions_per_user * self.n_users}"
            )
        if self.min_interactions_per_user > self.n_items or self.n_interactions > self.n_users * self.n_items:
            raise ValueError("more interactions requested than user x item pairs exist")
        return self

    def synergy_pairs(self) -> list[tuple[int, int]]:
        """Modality indices carrying synergy factor k: (k mod M, (k+1) mod M), so all pairs get used."""
        m = len(self.modalities)
        return [(k % m, (k + 1) % m) for k in range(self.n_synergy)]

    def latent_size(self, modality: str) -> int:
        idx = self.modalities.index(modality)
        carriers = sum(idx in pair for pair in self.synergy_pairs())
        return self.n_redundant + self.n_unique + carriers + self.n_noise

    @classmethod
    def preset(cls, preset: Preset, /, **overrides: object) -> SynthConfig:
        """Named configurations: ``small`` (the defaults), ``baby`` (the shape of Amazon Baby, 4096-d image and
        384-d text features), ``synergy-heavy`` (user taste driven mostly by the synergy factors) and
        ``synergy-sparse`` (the same taste over a catalogue with about 8 interactions per item, as sparse as
        the Amazon sets: there an item's ID vector is learned from too few interactions, so what the content
        encoders recover decides the ranking, which is where a missing synergy branch can show)."""
        base: dict[str, object] = {}
        if preset == "baby":
            base = dict(
                name="baby_synth", n_users=19_445, n_items=7_050, n_interactions=160_792,
                modalities=["image", "text"], dims=[4096, 384], n_redundant=8, n_unique=6, n_synergy=4, n_noise=16,
            )  # fmt: skip
        elif preset == "synergy-heavy":
            base = dict(SYNERGY_HEAVY)
        elif preset == "synergy-sparse":
            base = dict(SYNERGY_HEAVY, name="synergy_sparse", n_users=2000, n_items=3000, n_interactions=24_000)
        elif preset != "small":
            raise ValueError(f"unknown preset {preset!r}; choose small, baby, synergy-heavy or synergy-sparse")
        base.update(overrides)
        return cls(**base)


# Factor mix where most of the preference signal needs both modalities at once.
SYNERGY_HEAVY: dict[str, object] = dict(n_synergy=4, synergy_strength=3.0, redundant_weight=0.5, unique_weight=0.5)


def _item_factors(cfg: SynthConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = cfg.n_items
    f: dict[str, np.ndarray] = {"redundant": rng.standard_normal((n, cfg.n_redundant))}
    for m in cfg.modalities:
        f[f"unique_{m}"] = rng.standard_normal((n, cfg.n_unique))
    carriers = {m: np.zeros((n, cfg.n_synergy)) for m in cfg.modalities}
    synergy = np.zeros((n, cfg.n_synergy))
    for k, (a, b) in enumerate(cfg.synergy_pairs()):
        sa = rng.choice([-1.0, 1.0], size=n)
        sb = rng.choice([-1.0, 1.0], size=n)
        carriers[cfg.modalities[a]][:, k] = sa
        carriers[cfg.modalities[b]][:, k] = sb
        synergy[:, k] = sa * sb
    f["synergy"] = synergy
    for m in cfg.modalities:
        f[f"synergy_carrier_{m}"] = carriers[m]
        f[f"noise_{m}"] = rng.standard_normal((n, cfg.n_noise))
    rank = rng.permutation(n) + 1
    logpop = -cfg.popularity_exponent * np.log(rank)
    f["popularity"] = logpop - logpop.mean()
    return f


def _features(cfg: SynthConfig, f: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    pairs = cfg.synergy_pairs()
    assert cfg.dims is not None
    for idx, (m, d) in enumerate(zip(cfg.modalities, cfg.dims, strict=True)):
        carried = [k for k, p in enumerate(pairs) if idx in p]
        latent = np.concatenate(
            [f["redundant"], f[f"unique_{m}"], f[f"synergy_carrier_{m}"][:, carried], f[f"noise_{m}"]], axis=1
        )
        proj = rng.standard_normal((latent.shape[1], d)) / np.sqrt(latent.shape[1])
        x = latent @ proj + cfg.feature_noise * rng.standard_normal((cfg.n_items, d))
        out[m] = x.astype(np.float32)
    return out


def _block_score(pref: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """<pref_u, factor_i> scaled to unit variance (so the weights compare across blocks of different size)."""
    if factors.shape[1] == 0:
        return np.zeros((pref.shape[0], factors.shape[0]))
    return pref @ factors.T / np.sqrt(factors.shape[1])


def _user_counts(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Interactions per user: the minimum plus a log-normal-weighted share of the rest, capped at n_items."""
    extra = cfg.n_interactions - cfg.min_interactions_per_user * cfg.n_users
    activity = rng.lognormal(0.0, cfg.activity_sigma, cfg.n_users)
    counts = cfg.min_interactions_per_user + rng.multinomial(extra, activity / activity.sum())
    # Redistribute the overflow of users capped at n_items to the others, so the total stays exact.
    while (counts > cfg.n_items).any():
        over = int((counts - cfg.n_items).clip(min=0).sum())
        counts = counts.clip(max=cfg.n_items)
        room = cfg.n_items - counts
        counts += rng.multinomial(over, room / room.sum())
    return counts


def _interactions(cfg: SynthConfig, f: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(users, items, timestamps); also stores the user preference vectors in ``f``."""
    counts = _user_counts(cfg, rng)
    unique_all = np.concatenate([f[f"unique_{m}"] for m in cfg.modalities], axis=1)
    p_red = f["user_pref_redundant"] = rng.standard_normal((cfg.n_users, cfg.n_redundant))
    p_uni = f["user_pref_unique"] = rng.standard_normal((cfg.n_users, unique_all.shape[1]))
    p_syn = f["user_pref_synergy"] = rng.standard_normal((cfg.n_users, cfg.n_synergy))
    users, items = [], []
    for lo in range(0, cfg.n_users, _USER_CHUNK):
        hi = min(lo + _USER_CHUNK, cfg.n_users)
        score = (
            cfg.redundant_weight * _block_score(p_red[lo:hi], f["redundant"])
            + cfg.unique_weight * _block_score(p_uni[lo:hi], unique_all)
            + cfg.synergy_strength * _block_score(p_syn[lo:hi], f["synergy"])
            + cfg.popularity_weight * f["popularity"][None, :]
        )
        # Gumbel top-k = sampling without replacement proportional to exp(score / temperature).
        keys = score / cfg.temperature + rng.gumbel(size=score.shape)
        for r, u in enumerate(range(lo, hi)):
            k = int(counts[u])
            top = np.argpartition(-keys[r], k - 1)[:k]
            top = top[np.argsort(-keys[r, top])]  # order of preference, used as the time order
            users.append(np.full(k, u, dtype=np.int64))
            items.append(top.astype(np.int64))
    u_arr, i_arr = np.concatenate(users), np.concatenate(items)
    # Timestamps: each user's picks in preference order, at random gaps from a per-user start.
    starts = 1_500_000_000 + rng.integers(0, 10_000_000, cfg.n_users)
    gaps = rng.integers(60, 86_400, len(u_arr))
    first = np.r_[0, np.cumsum(counts)[:-1]]
    cum = np.cumsum(gaps)
    ts = starts[u_arr] + cum - np.repeat(cum[first] - gaps[first], counts)
    return u_arr, i_arr, ts.astype(np.int64)


def item_names(cfg: SynthConfig, factors: dict[str, np.ndarray]) -> list[dict]:
    """Display metadata per item row: a generated title and the category of its strongest redundant factor."""
    rng = np.random.default_rng([cfg.seed, _NAME_STREAM])
    n = cfg.n_items
    words = [rng.integers(0, len(w), n) for w in (_ADJECTIVES, _COLOURS, _NOUNS)]
    redundant = factors["redundant"]
    category = redundant.argmax(axis=1) if redundant.shape[1] else np.zeros(n, dtype=np.int64)
    # More redundant factors than category names: "Home 2", "Outdoors 2", ...
    names = [_CATEGORIES[k % len(_CATEGORIES)] + (f" {k // len(_CATEGORIES) + 1}" if k >= len(_CATEGORIES) else "")
             for k in range(max(redundant.shape[1], 1))]  # fmt: skip
    return [
        {"title": f"{_ADJECTIVES[a]} {_COLOURS[c]} {_NOUNS[o]}", "category": names[k]}
        for a, c, o, k in zip(*(w.tolist() for w in words), category.tolist(), strict=True)
    ]


def generate_synthetic(cfg: SynthConfig, out: Path) -> Path:
    """Generate a synthetic catalogue in the MMRec layout under ``out`` (created); returns ``out``.

    Writes ``<name>.inter``, ``<modality>_feat.npy``, ``i_id_mapping.csv``, ``u_id_mapping.csv``,
    ``item_meta.jsonl`` (generated titles and categories), ``factors.npz`` (see the module docstring for its
    keys) and ``synth_config.json``. The same config
    (including seed) always gives byte-identical files.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    factors = _item_factors(cfg, rng)
    features = _features(cfg, factors, rng)
    users, items, ts = _interactions(cfg, factors, rng)
    splits = mmrec_split(users, rng)

    ds = InteractionDataset(
        name=cfg.name, users=users, items=items, timestamps=ts, splits=splits,
        user_ids=[f"user{u:06d}" for u in range(cfg.n_users)], item_ids=[f"item{i:06d}" for i in range(cfg.n_items)],
        features=features, item_meta=item_names(cfg, factors),
    )  # fmt: skip
    write_mmrec(ds, out)
    np.savez(
        out / "factors.npz",
        **{k: v.astype(np.float32) for k, v in factors.items()},
        synergy_pairs=np.asarray(cfg.synergy_pairs(), dtype=np.int64).reshape(-1, 2),
        modalities=np.asarray(cfg.modalities),
    )
    (out / "synth_config.json").write_text(json.dumps(cfg.model_dump(), indent=2) + "\n", encoding="utf-8")
    return out


def load_factors(path: Path) -> dict[str, np.ndarray]:
    """The planted factors saved by ``generate_synthetic`` (``path`` = the dataset folder or the .npz)."""
    path = Path(path)
    f = path / "factors.npz" if path.is_dir() else path
    with np.load(f, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
