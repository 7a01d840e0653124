"""Writes a synthetic relation-extraction set (train.jsonl, dev.jsonl) for the knowledge-graph example.

No relation corpus ships with lmforge or can be downloaded in its tests, so this one is made from templates: four
relations between people, organisations and places (born_in, works_for, founded, based_in) and `no_relation` for
pairs that a sentence names without relating them (two places, a person and a second place, ...), and for every
relation read backwards. The names are drawn
from short lists of invented people and companies and real cities; train and dev use disjoint names, so a dev score
measures the sentence patterns, not memorised names.
Usage: python examples/knowledge-graph/make_relations.py --out DIR [--train 4000] [--dev 600] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

FIRST = "Anna Boris Carla David Elena Farid Greta Hugo Irene Jonas Karin Lukas Maria Nikolai Olga Pablo Rosa Samuel "
FIRST += "Tomas Ulrike Victor Wanda Yusuf Zofia Alice Bruno Chiara Daniel Emil Fatima Georg Hanna Ivan Julia Kenji Lena"
LAST = "Albers Brandt Castillo Dorn Eklund Ferrari Gruber Hartmann Ivanov Jansen Keller Lindqvist Moreau Novak Ortega "
LAST += "Petrov Quinn Rossi Schuster Tanaka Urban Vogel Weber Yilmaz Zeller Adler Becker Conti Duval Engel Fischer Graf"
COMPANY = "Norvale Brightwater Kestrel Halden Ostara Vantor Meridian Silverline Corvus Tessaro Aldwin Brennic Calyx "
COMPANY += "Dunmore Eastgate Fernhill Greyfield Harrow Ironbridge Juniper Kalder Larchmont Mirefield Northam Oakridge"
KIND = ["Systems", "Energy", "Motors", "Bank", "Pharma", "Labs", "Airlines", "Foods", "Robotics", "Insurance"]
CITY = "Berlin Paris Madrid Rome Vienna Prague Warsaw Oslo Stockholm Lisbon Dublin Athens Zurich Munich Milan Lyon "
CITY += "Boston Chicago Toronto Sydney Tokyo Seoul Mumbai Cairo Nairobi Lima Denver Seattle Hamburg Geneva Krakow Porto"

TEMPLATES = {
    "born_in": [
        "{P} was born in {L}.",
        "{P} was born in {L} in {Y}.",
        "Born in {L}, {P} later moved abroad.",
        "{P}, who was born in {L}, studied law.",
        "{P} grew up in {L}, where she was born in {Y}.",
        "The writer {P} was born in {L} and died in {L2}.",
        "{P} (born {Y} in {L}) is a chemist.",
        "{L} is the birthplace of {P}.",
        "{P} is a native of {L}.",
        "Like many in her family, {P} was born in {L}.",
    ],
    "works_for": [
        "{P} works for {O}.",
        "{P} is an engineer at {O}.",
        "{P}, a spokesman for {O}, declined to comment.",
        "{O} hired {P} as chief financial officer in {Y}.",
        "{P} joined {O} in {Y}.",
        "{P} has been the chief executive of {O} since {Y}.",
        "{O} said {P}, its head of research, would retire.",
        "According to {P}, an analyst at {O}, prices will rise.",
        "{P} is employed by {O} in {L}.",
        "{O} named {P} its new chairman on Monday.",
    ],
    "founded": [
        "{P} founded {O} in {Y}.",
        "{O} was founded by {P} in {Y}.",
        "{P} started {O} in a garage in {L}.",
        "{O}, founded by {P}, makes batteries.",
        "{P}, the founder of {O}, sold her stake in {Y}.",
        "In {Y}, {P} set up {O}.",
        "{P} co-founded {O} with two friends.",
        "{O} was established by {P} in {L}.",
        "The company {O} was created by {P} in {Y}.",
        "{P} launched {O} after leaving university.",
    ],
    "based_in": [
        "{O} is based in {L}.",
        "{O} is headquartered in {L}.",
        "{O}, a {L}-based firm, reported profits.",
        "The headquarters of {O} are in {L}.",
        "{O} has its head office in {L}.",
        "{L}-based {O} cut jobs.",
        "{O}, which is based in {L}, opened a new plant in {L2}.",
        "{O} moved its headquarters to {L} in {Y}.",
        "Shares of {O}, based in {L}, fell on Tuesday.",
        "{O} runs its business from offices in {L}.",
    ],
    "no_relation": [
        "{P} visited {L} last year.",
        "{P} criticised {O} in an interview.",
        "{P} met reporters in {L}.",
        "{O} sponsored a concert in {L} that {P} attended.",
        "{P} bought shares of {O}.",
        "{P} flew from {L} to {L2} on Friday.",
        "{O} and {O2} signed a deal in {L}.",
        "{P} spoke to {P2} in {L}.",
        "{P} wrote a book about {O}.",
        "{O} opened a shop in {L}.",
        "{P} and {P2} argued about {O}.",
        "Fans of {P} travelled to {L}.",
        "{P} sued {O} in {Y}.",
        "{O} bought {O2} for a large sum.",
        "{L} lies north of {L2}.",
        "The road from {L} to {L2} was closed.",
        "{O} has offices in {L} and {L2}.",
        "{P} studied history at {O}.",
        "{L}, the capital of {L2}, hosted the summit.",
        "{P} moved from {L} to {L2}.",
    ],
}
SLOTS = {"born_in": ("P", "L"), "works_for": ("P", "O"), "founded": ("P", "O"), "based_in": ("O", "L")}


def names(rng: random.Random, part: int) -> dict[str, list[str]]:
    """People, organisations and places of one split (part 0 train, 1 dev): disjoint halves of each list."""

    def half(words: list[str]) -> list[str]:
        return [w for i, w in enumerate(words) if i % 4 != 3] if part == 0 else words[3::4]

    first, last, company, city = (half(s.split()) for s in (FIRST, LAST, COMPANY, CITY))
    people = [f"{f} {surname}" for f in first for surname in last]
    orgs = [f"{c} {k}" for c in company for k in KIND]
    rng.shuffle(people)
    rng.shuffle(orgs)
    return {"P": people, "O": orgs, "L": city}


def example(rng: random.Random, pool: dict[str, list[str]]) -> dict:
    """One sentence and two of its entities: a relation's pair, that pair backwards or another pair (no_relation)."""
    label = rng.choice(list(TEMPLATES))
    template = rng.choice(TEMPLATES[label])
    fill = {k: rng.choice(v) for k, v in pool.items()} | {"Y": rng.randrange(1950, 2024)}
    fill.update(P2=fill["P"], O2=fill["O"], L2=fill["L"])
    while fill["L2"] == fill["L"] or fill["P2"] == fill["P"] or fill["O2"] == fill["O"]:  # a second, other entity
        fill.update(P2=rng.choice(pool["P"]), O2=rng.choice(pool["O"]), L2=rng.choice(pool["L"]))
    text = template.format(**fill)
    if label == "no_relation":
        slots = [s for s in ("P", "O", "L", "P2", "O2", "L2") if "{" + s + "}" in template]
        head, tail = rng.sample(slots, 2)
    else:
        head, tail = SLOTS[label]
    others = [s for s in ("P", "O", "L", "P2", "O2", "L2") if "{" + s + "}" in template and s not in (head, tail)]
    if label != "no_relation" and others and rng.random() < 0.3:  # another pair of the sentence: unrelated
        head, tail = rng.sample([rng.choice((head, tail)), *others], 2)  # never the related pair
        label = "no_relation"
    elif label != "no_relation" and rng.random() < 0.25:
        head, tail, label = tail, head, "no_relation"
    start_head, start_tail = text.index(fill[head]), text.index(fill[tail])
    return {
        "text": text,
        "head": {"start": start_head, "end": start_head + len(fill[head])},
        "tail": {"start": start_tail, "end": start_tail + len(fill[tail])},
        "label": label,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--dev", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for part, (name, n) in enumerate([("train", args.train), ("dev", args.dev)]):
        pool = names(rng, part)
        lines = [json.dumps(example(rng, pool)) for _ in range(n)]
        (args.out / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{args.train} train and {args.dev} dev sentences written to {args.out}")


if __name__ == "__main__":
    main()
