"""Writes guard/data/benign_prompts.txt: safe prompts, including ones that only sound dangerous.

The file is committed; this module is how it was made, so a reader can see (and extend) the templates.
Run `python -m guardforge_build.guard.benign` from the checkout to rewrite it. The output is deterministic (seeded).
"""

from __future__ import annotations

import random

from guardforge_build.guard import GUARD_DATA_DIR
from guardforge_build.guard.benign_questions import QUESTIONS

BENIGN_PROMPTS_PATH = GUARD_DATA_DIR / "benign_prompts.txt"

# Image-generation prompts: subject x setting x style, so the safe side of the training data looks like
# what users of an image studio actually type (short, comma-separated descriptors, no artist names).
SUBJECTS = [
    "a misty mountain lake at sunrise", "a lighthouse on a rocky coast", "a field of sunflowers",
    "a snowy pine forest", "a desert canyon with red rock arches", "a tropical beach with palm trees",
    "rolling green hills with sheep", "a waterfall in a jungle", "an old woman knitting by a window",
    "a portrait of a young man with freckles", "a smiling child flying a kite", "a jazz saxophonist on stage",
    "a ballerina mid-leap", "a fisherman mending nets", "a barista pouring latte art",
    "a pair of white sneakers on a pastel background", "a luxury wristwatch on black velvet",
    "a bottle of perfume with soft reflections", "a ceramic coffee mug on a wooden desk",
    "a wireless headphone product shot", "a dragon perched on a castle tower", "a wizard reading a glowing book",
    "an elven city in giant trees", "a floating island with waterfalls",
    "a knight in shining armor on a white horse", "a magical girl with a star wand",
    "a cat-eared anime girl in a school uniform waving", "a mecha robot in a hangar", "a gothic cathedral interior",
    "a modern glass skyscraper", "a Japanese temple in autumn", "a brutalist concrete library",
    "a cozy cottage with a thatched roof", "a bowl of ramen with a soft egg",
    "a stack of pancakes with maple syrup", "a sushi platter", "a chocolate cake with raspberries",
    "a fresh farmers market stall", "a red fox in the snow", "a golden retriever puppy in a meadow",
    "an owl on a branch at night", "a humpback whale breaching", "a hummingbird at a flower",
    "a herd of elephants at a watering hole", "a vintage car on a coastal road", "a steam train crossing a bridge",
    "a hot air balloon festival", "an astronaut floating above Earth", "a cyberpunk street market at night",
    "a cozy reading nook with rain on the window", "a bonsai tree on a stone table", "a koi pond with lily pads",
]
SETTINGS = [
    "", "at golden hour", "in heavy fog", "under a starry sky", "in soft morning light", "during a thunderstorm",
    "in spring bloom", "on a rainy evening", "with dramatic clouds", "in winter",
]
STYLES = [
    "photorealistic, 35mm film", "watercolor painting", "oil painting, impasto", "anime style, cel shading",
    "pixel art", "low poly 3d render", "studio photography, softbox lighting", "ink sketch",
    "isometric illustration", "ukiyo-e woodblock print style", "art nouveau poster", "claymation style",
    "8k, highly detailed, cinematic lighting", "flat vector illustration", "charcoal drawing",
    "children's book illustration", "macro photography, shallow depth of field", "vaporwave aesthetic",
]

# Benign look-alikes for image prompts: words a keyword filter would catch, in harmless scenes.
LOOKALIKE_IMAGES = [
    "a kitchen knife block on a marble counter", "a medieval battle reenactment painting",
    "a bottle of red wine spilled on a white tablecloth", "a toy water gun on a summer lawn",
    "a halloween zombie costume on a mannequin", "a nurse giving a vaccine to an adult patient",
    "a chemistry classroom with beakers and safety goggles", "a dark cinema just before they kill the lights",
    "a chef butchering a whole salmon in a restaurant kitchen", "a sword collection displayed in a museum",
    "a samurai statue in a temple garden", "a pirate ship firing cannons in a fantasy painting",
    "a tank at a military history museum", "a vampire costume party", "a skeleton decoration for halloween",
    "a hunter's cabin with antlers on the wall", "a firefighter spraying water on a training fire",
    "a boxing match in a crowded arena", "a fencing duel at the olympics", "an archery range with targets",
    "a bomb-shaped birthday cake for a video game fan", "a pharmacy shelf with vitamins",
    "a doctor holding a syringe in a clinic", "a blood orange sliced in half", "a red paint splatter abstract art",
    "a crime novel cover with a magnifying glass", "a detective examining fingerprints",
    "a prison cell in a museum tour", "a gunslinger cowboy in a western movie poster",
    "a paintball team in protective masks", "a laser tag arena with neon lights",
    "a dragon breathing fire on a castle", "a zombie movie poster, cartoon style", "a poison dart frog on a leaf",
    "a venomous snake at a zoo exhibit", "a shark in an aquarium tunnel", "a wolf howling at the moon",
    "a lion hunting on the savanna, wildlife photography",
    "a pile of autumn leaves being burned in a safe fire pit", "a fireworks display over a harbour",
    "a demolition crew taking down an old building", "a controlled avalanche blast on a ski slope",
    "a tattoo artist drawing a dagger tattoo", "a surgeon in an operating room", "a hospital emergency room",
    "a cemetery at dawn with mist", "a memorial with flowers and candles", "a world war two memorial statue",
    "a historical painting of a revolution", "a gladiator arena ruin in Rome",
    "a ninja in a video game concept art", "a bartender mixing cocktails", "a cigar lounge with leather chairs",
    "a beer garden in summer", "a hemp rope coiled on a sailboat deck", "a rooftop bar at night",
    "a pill-shaped capsule hotel in Tokyo", "a woman in a bikini on a beach volleyball court",
    "a family at a swimming pool", "a breastfeeding mother, tasteful portrait",
    "a marble statue of a Greek god in a museum", "a figure drawing class with a clothed model",
    "a crash test dummy in a car safety lab", "a police officer directing traffic",
    "a soldier hugging family at an airport homecoming", "a scarecrow in a cornfield",
    "a haunted house ride at an amusement park", "a carved jack-o-lantern with a scary face",
    "a butcher shop window with hanging sausages", "a meat cleaver next to vegetables on a cutting board",
    "a gun-shaped glue gun for crafts", "an axe splitting firewood", "a chainsaw ice sculpture contest",
    "a rifle in a glass case at a history museum", "a bow and arrow made by a craftsman",
    "a crossbow on a fantasy character sheet", "a skull-shaped candle", "a pirate flag on a toy ship",
]

# Benign questions and requests that share words with harmful ones. Written for this project (not taken
# from any evaluation set): homonyms, figurative speech, safe targets, fiction, history, safety advice.
LOOKALIKE_TEXTS = [
    "how do I kill a stuck process on Linux", "how can I kill weeds in my garden without chemicals",
    "what's the best way to shoot a portrait in low light", "how do I shoot a basketball free throw",
    "how do I execute a shell script on startup", "how to terminate a rental agreement early",
    "how do I blow up a photo to poster size", "how can I blow away the audience in my speech",
    "what's the best way to attack a chess opening", "how do I crush my marathon goal",
    "how do I beat the final boss in this game", "how can I destroy my opponent in a debate",
    "how do I strangle a fig tree vine in my garden", "how to hang a heavy mirror on drywall",
    "how do I cut down a tall tree safely", "how to smash garlic with a knife",
    "how do I break into the music industry", "how to steal the show at a talent contest",
    "how do I hijack my own attention to focus better", "how to choke up on a baseball bat",
    "what household chemicals should never be mixed, for safety", "how do vaccines train the immune system",
    "why is carbon monoxide dangerous and how do detectors work", "how do I safely dispose of old medication",
    "what are the warning signs of a stroke", "how do firefighters put out electrical fires",
    "how did the Manhattan project change history", "why did the Roman empire fall",
    "what happened at the battle of Hastings", "explain the causes of the first world war",
    "what is the history of the atomic bomb in one paragraph", "what was the Cuban missile crisis",
    "what does the word assassin originally mean", "what is the definition of genocide in international law",
    "what is phishing and how can I protect my parents from it", "how do I recognise a scam phone call",
    "how do I report online harassment", "how can I support a friend who is feeling depressed",
    "where can I find a suicide prevention hotline", "what are healthy ways to cope with stress",
    "how do I kill time at the airport", "my phone battery is dying, how do I save it",
    "how to murder a karaoke song with style, jokingly", "how to make a killer first impression at an interview",
    "write a murder mystery plot for a board game night",
    "in my fantasy novel the villain poisons a king; suggest a plot twist",
    "describe a sword fight scene for a children's adventure book", "how do I whittle a wooden toy sword",
    "how to carve a pumpkin into a scary face", "what is the safest way to store kitchen knives",
    "how do I sharpen a chef knife", "how do I clean a fish I caught", "how do I humanely trap a mouse in my house",
    "how to get rid of ants in the kitchen", "how do I safely use a fire extinguisher",
    "how to build a campfire safely", "what is the legal drinking age in Germany",
    "what are the effects of caffeine on sleep", "how does a nuclear power plant produce electricity",
    "why is bleach dangerous to mix with ammonia", "how do airport scanners detect weapons",
    "what is the plot of the movie Kill Bill", "who was Jack the Ripper, historically",
    "what is the capital of North Korea",
    "what is the population of Gaza", "why do some people believe conspiracy theories",
    "how do I explain death to a young child", "what should I do if someone is choking",
    "how to treat a minor burn at home", "how to give CPR to an adult",
    "draw a cute ghost holding a sign saying boo",
    "paint a scene of soldiers playing football in the trenches at christmas",
    "generate an image of a cartoon bomb with a smiling face for a game icon",
    "make a poster for a zombie walk charity event", "create a tarot card design of death, art nouveau style",
    "illustrate a dragon attacking a village for a fantasy book cover",
    "render a sci-fi laser gun prop for a movie", "a photo of my dog pretending to be dead as a trick",
    "a meme of a cat plotting world domination",
]

PORTRAIT_PEOPLE = [
    "an elderly fisherman", "a young nurse", "a tattooed chef", "a grandmother baking bread",
    "a teenage skateboarder", "a firefighter after a shift", "a violinist", "a farmer in a wheat field",
    "a scientist in a lab coat", "a mountain climber at the summit",
]
PORTRAIT_STYLES = [
    "head and shoulders portrait, natural light", "environmental portrait, documentary style",
    "black and white portrait, high contrast", "oil portrait, rembrandt lighting",
]


def build_prompts(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    prompts: list[str] = []
    for subject in SUBJECTS:
        for _ in range(3):
            setting = rng.choice(SETTINGS)
            style = rng.choice(STYLES)
            prompts.append(", ".join(part for part in (f"{subject} {setting}".strip(), style) if part))
    for person in PORTRAIT_PEOPLE:
        for style in rng.sample(PORTRAIT_STYLES, 2):
            prompts.append(f"{person}, {style}")
    for scene in LOOKALIKE_IMAGES:
        prompts.append(scene)
        prompts.append(f"{scene}, {rng.choice(STYLES)}")
    prompts.extend(LOOKALIKE_TEXTS)
    # Hand-written safe questions: homonyms, figurative speech, safe targets and contexts, definitions,
    # public facts, nonsense groups, health and everyday requests (guard/training/benign_questions.py).
    prompts.extend(QUESTIONS)
    # Keep order stable and drop accidental duplicates.
    return list(dict.fromkeys(prompts))


def main() -> None:
    prompts = build_prompts()
    BENIGN_PROMPTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    BENIGN_PROMPTS_PATH.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    print(f"wrote {len(prompts)} prompts to {BENIGN_PROMPTS_PATH}")


if __name__ == "__main__":
    main()
