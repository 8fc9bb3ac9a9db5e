"""Question-writing prompts, our own few-shot pool, and the validity checks of a question.

The pool is ours: twelve short encyclopedia-style passages written for this library (one or
two per paper category), each with a question of the kind we want: specific, factual,
answered by the passage, naming its topic, and readable without the passage. None is taken
from the research code.

Validity rules (:func:`check_question`), applied to every generated question:

1. the raw output is cleaned (:func:`extract_question`): the first line containing ``?`` is
   taken (cut after its first ``?``), prefixes such as ``Question:``, ``Q:``, list markers,
   quotes and Markdown emphasis are removed; without any ``?`` the first non-empty line is
   used;
2. empty, or shorter than 3 words: rejected (``empty`` / ``too_short``);
3. mentioning the document, passage, text, article or information (whole words, any case,
   plurals included; "textile" or "context" are fine): rejected (``mentions_source``), since
   the question must stand on its own when asked without the passage;
4. not a question: it must end with ``?``, or start with an interrogative word (who, what,
   when, where, which, why, how, whose, whom), an auxiliary (is, are, was, were, do, does,
   did, can, could, has, have, had, will, would, should) or a preposition followed by one
   ("In which year ..."), in which case ``?`` is appended; an output cut by the token limit
   without a ``?`` is rejected as ``truncated``, other non-questions as ``not_a_question``;
5. the same question as one already accepted for the same document, compared after
   lower-casing and removing punctuation and extra spaces: rejected (``duplicate``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from ...core.protocols import Message

#: the research code's blacklist as whole words (it used substrings, so "textile" failed)
DEFAULT_BANNED_WORDS: tuple[str, ...] = ("document", "passage", "text", "article", "information")

SYSTEM_PROMPT = (
    "You write quiz questions about encyclopedia topics. Each question must be answered by "
    "the reference passage you are given, have one clear and factual answer, and make sense "
    "to a reader who has never seen that passage."
)

USER_TEMPLATE = (
    "Topic: {topic}\n\n"
    "Reference passage:\n{passage}\n\n"
    "Write one specific question about {topic} whose answer is stated in the reference passage. "
    "Name {topic} in the question, do not refer to the passage itself, and do not give the "
    "answer. Reply with the question only."
)


@attrs.frozen
class Example:
    topic: str
    passage: str
    question: str


POOL: tuple[Example, ...] = (
    Example(
        "Lake Baikal",
        "Lake Baikal is a rift lake in southern Siberia, Russia, lying between Irkutsk Oblast to "
        "the northwest and the Republic of Buryatia to the southeast. It is the deepest lake in "
        "the world, reaching a maximum depth of 1,642 metres, and the largest freshwater lake by "
        "volume, holding roughly 23,600 cubic kilometres of water, about a fifth of the unfrozen "
        "fresh surface water on Earth. The lake is also among the oldest on the planet: the rift "
        "basin that holds it began to form some 25 to 30 million years ago. More than 300 rivers "
        "and streams flow into Baikal, but only one, the Angara, drains out of it, flowing "
        "towards the Yenisei. The water is exceptionally clear, and in winter the surface "
        "freezes for four to five months, with ice thick enough to carry vehicles. Its isolation "
        "has produced a remarkable number of endemic species, among them the Baikal seal, or "
        "nerpa, one of the very few seals that live only in fresh water, and the golomyanka, a "
        "translucent oilfish that gives birth to live young. UNESCO listed Lake Baikal as a "
        "World Heritage Site in 1996.",
        "Which river is the only outflow of Lake Baikal?",
    ),
    Example(
        "The Great Wave off Kanagawa",
        "The Great Wave off Kanagawa is a woodblock print by the Japanese artist Hokusai, "
        "published around 1831 as the first print in his series Thirty-six Views of Mount Fuji. "
        "It shows three boats rowing through a towering wave whose claw-like crest curls over "
        "the fishermen, while Mount Fuji appears small and calm in the distance, framed by the "
        "trough of the wave. The print belongs to the ukiyo-e genre and was produced in large "
        "editions for a popular market, so thousands of impressions were taken from the carved "
        "blocks; museums around the world, including the British Museum and the Metropolitan "
        "Museum of Art, hold copies. Hokusai made striking use of Prussian blue, a synthetic "
        "pigment imported from Europe that had only recently become affordable in Japan and "
        "that resisted fading better than traditional plant-based blues. After Japan opened to "
        "Western trade in the 1850s, prints such as this one reached Europe and fed the fashion "
        "known as Japonisme, influencing painters among the Impressionists and the composer "
        "Claude Debussy, who chose the image for the cover of the first edition of his "
        "orchestral work La Mer.",
        "Which imported synthetic pigment did Hokusai use prominently in The Great Wave off "
        "Kanagawa?",
    ),
    Example(
        "Penicillin",
        "Penicillin was the first antibiotic to be discovered and widely used in medicine. In "
        "September 1928 the Scottish bacteriologist Alexander Fleming, working at St Mary's "
        "Hospital in London, noticed that a mould contaminating one of his culture plates of "
        "Staphylococcus had killed the bacteria around it. He identified the mould as a species "
        "of Penicillium and named the antibacterial substance it released penicillin, but he "
        "was unable to purify it in useful quantities. A decade later, a team at the University "
        "of Oxford led by Howard Florey and Ernst Chain, with the biochemist Norman Heatley, "
        "developed methods to extract and concentrate the drug and showed in 1940 that it "
        "protected infected mice. The first human patient, a police constable named Albert "
        "Alexander, was treated in 1941; he improved, but died when the small supply ran out. "
        "Mass production by deep-tank fermentation in the United States made penicillin "
        "available to Allied troops by the D-Day landings of 1944. Fleming, Florey and Chain "
        "shared the 1945 Nobel Prize in Physiology or Medicine. Penicillin works by blocking the "
        "enzymes that build the bacterial cell wall, so that growing bacteria burst; its overuse "
        "has contributed to the spread of resistant strains.",
        "In which year did Alexander Fleming notice the mould that led to the discovery of "
        "penicillin?",
    ),
    Example(
        "Meiji Restoration",
        "The Meiji Restoration was the political revolution that returned practical rule of "
        "Japan to the emperor in 1868 and ended more than two and a half centuries of rule by "
        "the Tokugawa shogunate. Pressure had been building since 1853, when the American "
        "commodore Matthew Perry arrived with warships and pressed the shogunate to open "
        "Japanese ports to foreign trade. Samurai from the southwestern domains of Satsuma and "
        "Choshu, who resented the unequal treaties signed with Western powers, allied against "
        "the shogun, and after the short Boshin War the young Emperor Mutsuhito, known by his "
        "reign name Meiji, became the symbol of a new centralised state. The capital moved from "
        "Kyoto to Edo, which was renamed Tokyo. Over the following decades the government "
        "abolished the feudal domains and replaced them with prefectures, dissolved the samurai "
        "class, introduced universal conscription in 1873, and built railways, telegraphs and "
        "modern factories, often with the help of foreign advisers. A constitution modelled in "
        "part on that of Prussia was promulgated in 1889, creating an elected parliament, the "
        "Imperial Diet. By the early twentieth century Japan had become an industrial power "
        "able to defeat Russia in the war of 1904 to 1905.",
        "Which two southwestern domains led the alliance against the shogun during the Meiji "
        "Restoration?",
    ),
    Example(
        "Tardigrade",
        "Tardigrades, often called water bears or moss piglets, are microscopic animals that "
        "form their own phylum, Tardigrada. Most adults are between 0.3 and 0.5 millimetres "
        "long and have a plump, segmented body with four pairs of stubby legs, each ending in "
        "claws or sucking discs. The German zoologist Johann August Ephraim Goeze first "
        "described them in 1773, and more than 1,300 species are now known from habitats "
        "ranging from mountain tops to the deep sea, many of them living in the thin films of "
        "water on mosses and lichens. Tardigrades are famous for their resistance to extreme "
        "conditions. When their surroundings dry out, many species retract their legs, lose "
        "almost all of their body water and curl into a dormant state called a tun, in which "
        "metabolism nearly stops. In this form they have survived temperatures close to "
        "absolute zero, high doses of radiation and, in a 2007 experiment aboard the FOTON-M3 "
        "capsule, ten days of exposure to the vacuum of outer space. They recover when water "
        "returns. Tardigrades feed mainly by piercing plant cells, algae or small invertebrates "
        "with a pair of stylets and sucking out the contents.",
        "What is the dormant, dried-out state of a tardigrade called?",
    ),
    Example(
        "Superconductivity",
        "Superconductivity is a set of physical properties observed in certain materials in "
        "which electrical resistance vanishes and magnetic fields are expelled from the "
        "interior of the material. It was discovered in 1911 by the Dutch physicist Heike "
        "Kamerlingh Onnes, who found that the resistance of solid mercury dropped abruptly to "
        "zero when it was cooled below about 4.2 kelvin with liquid helium, which he had been "
        "the first to produce. The expulsion of magnetic fields, known as the Meissner effect, "
        "was observed in 1933 by Walther Meissner and Robert Ochsenfeld, and it distinguishes a "
        "superconductor from a merely perfect conductor. A microscopic explanation of "
        "conventional superconductors came only in 1957 with the BCS theory of John Bardeen, "
        "Leon Cooper and John Robert Schrieffer, in which electrons bind into Cooper pairs that "
        "move through the crystal lattice without scattering. In 1986 Georg Bednorz and Alex "
        "Muller found superconductivity in a ceramic copper oxide at around 35 kelvin, opening "
        "the field of high-temperature superconductors, some of which work above the boiling "
        "point of liquid nitrogen, 77 kelvin. Superconducting magnets are used in MRI scanners "
        "and in particle accelerators such as the Large Hadron Collider.",
        "What name is given to the expulsion of magnetic fields that accompanies "
        "superconductivity?",
    ),
    Example(
        "Ella Fitzgerald",
        "Ella Fitzgerald (1917-1996) was an American jazz singer often called the First Lady of "
        "Song. Born in Newport News, Virginia, and raised in Yonkers, New York, she had a "
        "difficult adolescence and was briefly homeless before she won an amateur night at the "
        "Apollo Theater in Harlem in 1934. The drummer and bandleader Chick Webb hired her soon "
        "afterwards, and in 1938 her playful version of the nursery rhyme \"A-Tisket, "
        "A-Tasket\", which she co-wrote, became a major hit. After Webb's death in 1939 she led "
        "his band for several years. In the 1940s she became one of the great exponents of scat "
        "singing, improvising wordless lines with the agility of a horn player. Beginning in "
        "1956 she recorded a celebrated series of Song Book albums for the Verve label, run by "
        "her manager Norman Granz, each devoted to a composer or songwriting team such as Cole "
        "Porter, Duke Ellington and George and Ira Gershwin. Over a career of nearly sixty years "
        "she won thirteen Grammy Awards, two of them at the first ceremony in 1959, and she "
        "received the Presidential Medal of Freedom in 1992.",
        "At which Harlem venue did Ella Fitzgerald win an amateur night in 1934?",
    ),
    Example(
        "Audrey Hepburn",
        "Audrey Hepburn (1929-1993) was a British actress and humanitarian. She was born in "
        "Ixelles, a municipality of Brussels, and spent part of her childhood in the "
        "Netherlands, where she lived through the German occupation during the Second World "
        "War and studied ballet. After moving to London she trained as a dancer, appeared in "
        "chorus lines and took small film roles, before the French novelist Colette chose her "
        "for the title role of the Broadway play Gigi in 1951. Her first starring film role, as "
        "a princess exploring Rome incognito in William Wyler's Roman Holiday (1953), won her "
        "the Academy Award for Best Actress, and in 1954 she also won a Tony Award for the play "
        "Ondine. She went on to star in Sabrina (1954), Funny Face (1957), The Nun's Story "
        "(1959), Breakfast at Tiffany's (1961), in which she played Holly Golightly, and My "
        "Fair Lady (1964). From the late 1960s she worked less in films, and in 1988 she became "
        "a Goodwill Ambassador for UNICEF, travelling to Ethiopia, Somalia and other countries "
        "to draw attention to children in need. She received the Presidential Medal of Freedom "
        "in 1992 and died the following year at her home in Tolochenaz, Switzerland.",
        "For which 1953 film did Audrey Hepburn win the Academy Award for Best Actress?",
    ),
    Example(
        "Hyperinflation in the Weimar Republic",
        "Hyperinflation in the Weimar Republic was the collapse of the German currency between "
        "1921 and 1923. Germany had financed much of the First World War by borrowing and "
        "printing money, and the Treaty of Versailles then required it to pay reparations, "
        "largely in gold or foreign currency. The government kept printing paper marks to buy "
        "foreign exchange and to cover its deficits, and prices began to rise faster than "
        "wages. The crisis deepened in January 1923, when French and Belgian troops occupied the "
        "Ruhr, Germany's industrial heartland, after Germany fell behind on deliveries; the "
        "government supported the striking workers there by printing still more money. By "
        "November 1923 one United States dollar was worth about 4.2 trillion marks, prices could "
        "double within days, and many workers were paid twice a day so that they could spend "
        "their wages before they lost value. Savings held in marks were wiped out, which hurt "
        "the middle classes in particular. The inflation was halted by a new currency, the "
        "Rentenmark, introduced in November 1923 at one Rentenmark for one trillion paper "
        "marks, and by the Dawes Plan of 1924, which rescheduled reparations and brought in "
        "foreign loans.",
        "Which new currency was introduced in November 1923 to end the hyperinflation in the "
        "Weimar Republic?",
    ),
    Example(
        "Europa (moon)",
        "Europa is the smallest of the four Galilean moons of Jupiter and the sixth-closest of "
        "all Jupiter's moons to the planet. It was discovered in January 1610 by Galileo "
        "Galilei, and possibly independently by Simon Marius, who proposed the names taken from "
        "Greek mythology that are used today. With a diameter of about 3,120 kilometres, Europa "
        "is slightly smaller than Earth's Moon. Its surface is made of water ice and is one of "
        "the smoothest in the Solar System: it has few large craters, which suggests that it is "
        "geologically young, and it is crossed by long reddish-brown cracks and ridges called "
        "lineae. Measurements of Europa's magnetic field by the Galileo spacecraft in the late "
        "1990s indicated that a salty ocean of liquid water probably lies beneath the ice "
        "shell, kept liquid by tidal heating as Europa's orbit, in resonance with those of Io "
        "and Ganymede, flexes its interior. Because such an ocean could in principle support "
        "life, Europa is a major target for exploration: NASA's Europa Clipper spacecraft was "
        "launched in October 2024 to make dozens of close flybys, and the European Space "
        "Agency's JUICE mission will also observe it.",
        "What are the long reddish-brown cracks and ridges on the surface of Jupiter's moon "
        "Europa called?",
    ),
    Example(
        "Atacama Desert",
        "The Atacama Desert is a desert plateau in South America covering a strip of land about "
        "1,600 kilometres long on the Pacific coast, west of the Andes, mostly in northern "
        "Chile. It is the driest non-polar desert in the world: some weather stations in its "
        "core have never recorded rain. The aridity has two main causes. The cold Humboldt "
        "Current offshore cools the air and creates a persistent temperature inversion that "
        "keeps rain clouds from forming, while the Andes to the east block moisture coming from "
        "the Amazon basin, leaving the desert in a rain shadow. Along the coast, dense fogs "
        "known locally as camanchaca supply enough moisture for a few specialised plants and "
        "are collected with nets by some communities. The Atacama is rich in minerals; it was "
        "long the world's main source of sodium nitrate, which was fought over in the War of "
        "the Pacific between 1879 and 1884, and it now holds major deposits of copper and "
        "lithium. Its high altitude, dry air and clear skies make it one of the best places on "
        "Earth for astronomy, and it hosts observatories such as the Atacama Large Millimeter "
        "Array and the Very Large Telescope.",
        "What is the local name of the dense coastal fogs of the Atacama Desert?",
    ),
    Example(
        "Waggle dance",
        "The waggle dance is a behaviour of the western honey bee by which a forager that has "
        "found a good source of nectar or pollen tells other workers in the hive where it is. "
        "On the vertical surface of the comb, the dancer runs forward in a straight line while "
        "shaking its body from side to side, then circles back to the start, alternately to "
        "the right and to the left, and repeats the run many times. The angle of the straight "
        "waggle run relative to vertical corresponds to the direction of the food source "
        "relative to the direction of the Sun, so a run straight up the comb means that the "
        "flowers lie directly towards the Sun. The duration of the waggle run encodes "
        "distance: the longer the run, the farther away the food, with roughly one second of "
        "waggling for about a kilometre in many colonies. When a source is close to the hive, "
        "bees perform a simpler round dance instead. The Austrian ethologist Karl von Frisch "
        "worked out the meaning of the dance through decades of experiments, and he shared the "
        "1973 Nobel Prize in Physiology or Medicine with Konrad Lorenz and Nikolaas Tinbergen. "
        "Later studies with robotic bees and radar tracking confirmed that recruits use the "
        "directions.",
        "What does the duration of the waggle run in a honey bee's waggle dance indicate?",
    ),
)


def user_message(topic: str, passage: str, template: str = USER_TEMPLATE) -> str:
    return template.format(topic=topic.strip(), passage=passage.strip())


def build_messages(
    topic: str,
    passage: str,
    shots: Sequence[Example],
    *,
    system: str = SYSTEM_PROMPT,
    template: str = USER_TEMPLATE,
) -> list[Message]:
    """System turn, one user/assistant pair per shot, then the passage to ask about."""
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    for ex in shots:
        messages.append({"role": "user", "content": user_message(ex.topic, ex.passage, template)})
        messages.append({"role": "assistant", "content": ex.question})
    messages.append({"role": "user", "content": user_message(topic, passage, template)})
    return messages


# -- validity -------------------------------------------------------------------------------

_PREFIX = re.compile(
    r"^\s*(?:[-*\u2022]\s*|\(?\d{1,2}[.)]\s*|(?:proposed\s+|generated\s+)?question\s*\d*\s*[:.\-]\s*"
    r"|q\d*\s*[:.]\s*)+",
    re.IGNORECASE,
)
_WRAP = "\"'`*_\u201c\u201d\u2018\u2019 "
_INTERROGATIVE = frozenset(
    ["who", "what", "when", "where", "which", "why", "how", "whose", "whom", "is", "are", "was",
     "were", "do", "does", "did", "can", "could", "has", "have", "had", "will", "would", "should"]
)
_PREPOSITIONS = frozenset(
    ["in", "on", "at", "by", "from", "for", "of", "to", "during", "after", "before", "since",
     "under", "with"]
)


def _clean_line(line: str) -> str:
    line = line.strip().strip(_WRAP)
    previous = None
    while previous != line:
        previous = line
        line = _PREFIX.sub("", line).strip().strip(_WRAP)
    return " ".join(line.split())


def extract_question(raw: str) -> str:
    """The question in a model's raw output (see rule 1 of the module docstring)."""
    lines = [_clean_line(x) for x in raw.splitlines()]
    lines = [x for x in lines if x]
    for line in lines:
        if "?" in line:
            return line[: line.index("?") + 1].strip()
    return lines[0] if lines else ""


def banned_pattern(words: Sequence[str]) -> re.Pattern[str] | None:
    if not words:
        return None
    alternatives = "|".join(re.escape(w.strip()) for w in words if w.strip())
    return re.compile(rf"\b(?:{alternatives})(?:s|es)?\b", re.IGNORECASE)


def normalize_question(question: str) -> str:
    """The form duplicates are compared in: lower case, no punctuation, single spaces."""
    return " ".join(re.sub(r"[^\w\s]", " ", question.lower()).split())


def _interrogative(question: str) -> bool:
    words = question.lower().split()
    if not words:
        return False
    if words[0] in _INTERROGATIVE:
        return True
    return len(words) > 1 and words[0] in _PREPOSITIONS and words[1] in _INTERROGATIVE


def check_question(
    raw: str,
    *,
    finish_reason: str = "stop",
    seen: set[str] | frozenset[str] = frozenset(),
    banned: re.Pattern[str] | None = None,
) -> tuple[str | None, str]:
    """``(question, "ok")`` or ``(None, reason)``; see the module docstring for the rules."""
    question = extract_question(raw)
    if not question:
        return None, "empty"
    if len(question.split()) < 3:
        return None, "too_short"
    if banned is not None and banned.search(question):
        return None, "mentions_source"
    if not question.endswith("?"):
        if finish_reason == "length":
            return None, "truncated"
        if not _interrogative(question):
            return None, "not_a_question"
        question = question.rstrip(".!:; ") + "?"
    if normalize_question(question) in seen:
        return None, "duplicate"
    return question, "ok"
