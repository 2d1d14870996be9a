"""The demo's service catalogue: 317 services of the kind a Chengquan e-Station offers, 65 of
them also at Bank of Jiangsu agent branches (PRODUCT.md).

Generated, not scraped: each service is a matter (社保, 公积金, 不动产 …) and something done
with it (查询, 证明打印, 缴费 …), named in Chinese and English, with its department, form and
fee references. The same version gives the same bundle, so a demo release hashes the same.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Final

from kioskfleet.protocol.catalogue import (
    CatalogueBundle,
    Category,
    Fee,
    Names,
    Need,
    Service,
)
from kioskfleet.protocol.stations import SiteType

SERVICES: Final = 317
BANK_AGENT_SERVICES: Final = 65

#: (slug, 中文, English, department 中文, department English)
_MATTERS: Final = (
    (
        "si",
        "社会保险",
        "social insurance",
        "市人社局",
        "Human Resources and Social Security Bureau",
    ),
    ("mi", "医疗保险", "medical insurance", "市医保局", "Healthcare Security Bureau"),
    ("hf", "住房公积金", "housing provident fund", "市公积金中心", "Housing Provident Fund Center"),
    ("re", "不动产", "real estate", "市自然资源和规划局", "Natural Resources and Planning Bureau"),
    ("hh", "户籍", "household registration", "市公安局", "Public Security Bureau"),
    ("tx", "个人所得税", "individual income tax", "市税务局", "Taxation Bureau"),
    ("bt", "企业税务", "business tax", "市税务局", "Taxation Bureau"),
    ("bl", "营业执照", "business licence", "市市场监管局", "Market Regulation Administration"),
    ("tv", "交通违法", "traffic violations", "市公安局交警支队", "Traffic Police Detachment"),
    ("dl", "机动车驾驶证", "driving licence", "市公安局交警支队", "Traffic Police Detachment"),
    ("vr", "机动车", "motor vehicle", "市公安局交警支队", "Traffic Police Detachment"),
    ("mr", "婚姻登记", "marriage registration", "市民政局", "Civil Affairs Bureau"),
    ("ed", "入学", "school enrolment", "市教育局", "Education Bureau"),
    ("rp", "居住证", "residence permit", "市公安局", "Public Security Bureau"),
    ("ee", "出入境证件", "exit-entry documents", "市出入境管理局", "Exit-Entry Administration"),
    ("pv", "公共租赁住房", "public rental housing", "市住建局", "Housing and Construction Bureau"),
    (
        "un",
        "失业保险",
        "unemployment insurance",
        "市人社局",
        "Human Resources and Social Security Bureau",
    ),
    ("pe", "养老金", "pension", "市人社局", "Human Resources and Social Security Bureau"),
    ("da", "残疾人补贴", "disability allowance", "市残联", "Disabled Persons' Federation"),
    ("ma", "低保", "minimum living allowance", "市民政局", "Civil Affairs Bureau"),
    ("bc", "出生医学证明", "birth certificate", "市卫健委", "Health Commission"),
    ("vc", "预防接种", "vaccination records", "市卫健委", "Health Commission"),
    (
        "cr",
        "无犯罪记录证明",
        "no-criminal-record certificate",
        "市公安局",
        "Public Security Bureau",
    ),
    (
        "pc",
        "职业资格",
        "professional qualification",
        "市人社局",
        "Human Resources and Social Security Bureau",
    ),
    ("lc", "劳动合同", "labour contract", "市人社局", "Human Resources and Social Security Bureau"),
    ("ec", "企业年报", "annual company report", "市市场监管局", "Market Regulation Administration"),
    (
        "fd",
        "食品经营许可",
        "food business permit",
        "市市场监管局",
        "Market Regulation Administration",
    ),
    (
        "ci",
        "城乡居民医保",
        "urban-rural medical insurance",
        "市医保局",
        "Healthcare Security Bureau",
    ),
    ("st", "学生资助", "student aid", "市教育局", "Education Bureau"),
    ("mv", "退役军人优待", "veterans' benefits", "市退役军人事务局", "Veterans Affairs Bureau"),
    ("tc", "公共交通卡", "public transport card", "无锡地铁集团", "Wuxi Metro Group"),
    (
        "lr",
        "农村土地承包",
        "rural land contracts",
        "市农业农村局",
        "Agriculture and Rural Affairs Bureau",
    ),
)
#: (slug, 中文, English, category, what it needs of the kiosk): done with any matter
_ACTIONS: Final[tuple[tuple[str, str, str, Category, tuple[Need, ...]], ...]] = (
    ("g", "办事指南", "service guide", "information_lookup", ()),
    ("q", "信息查询", "information lookup", "information_lookup", ("id_reader",)),
    ("p", "证明打印", "certificate printing", "information_lookup", ("id_reader", "printer")),
    ("r", "进度查询", "application status", "information_lookup", ("id_reader",)),
    ("y", "预约取号", "appointment booking", "information_lookup", ("id_reader", "printer")),
    ("a", "申请受理", "application", "approval", ("id_reader", "printer")),
    ("c", "信息变更", "change of details", "approval", ("id_reader", "printer")),
    ("n", "续期办理", "renewal", "approval", ("id_reader", "printer")),
    ("x", "注销办理", "cancellation", "approval", ("id_reader", "printer")),
    ("e", "材料补正", "supplementary documents", "approval", ("id_reader", "printer")),
)
#: done with the matters that have something to pay
_PAY: Final = ("f", "费用缴纳", "payment", "utility_payment", ("cash", "printer"))
_PAYABLE: Final = frozenset({"si", "mi", "ci", "tv", "pv", "ee", "vr", "tc"})
#: done with the matters that hold a citizen's money (accounts, funds, benefits)
_FINANCIAL: Final[tuple[tuple[str, str, str, Category, tuple[Need, ...]], ...]] = (
    ("b", "银行卡签约", "bank card linking", "financial_service", ("id_reader", "card_reader")),
    ("w", "提取办理", "withdrawal", "financial_service", ("id_reader", "card_reader", "printer")),
    ("l", "账户余额查询", "account balance", "financial_service", ("id_reader", "card_reader")),
)
_FUNDS: Final = frozenset({"si", "mi", "hf", "pe", "un", "ci"})
#: utilities and everyday bills: one payment service each (Wuxi's utilities)
_BILLS: Final = (
    ("water", "水费", "water bill", "无锡市水务集团", "Wuxi Water Group"),
    ("power", "电费", "electricity bill", "国网无锡供电公司", "State Grid Wuxi Power Supply"),
    ("gas", "燃气费", "gas bill", "无锡华润燃气", "Wuxi China Resources Gas"),
    (
        "tel",
        "固话宽带费",
        "landline and broadband bill",
        "中国电信无锡分公司",
        "China Telecom Wuxi",
    ),
    ("heat", "物业费", "property management fee", "物业服务企业", "Property management companies"),
    ("tv", "有线电视费", "cable TV fee", "江苏有线无锡分公司", "Jiangsu Cable Wuxi"),
    ("park", "停车欠费", "parking arrears", "市城管局", "Urban Management Bureau"),
)
_SITES_EVERYWHERE: Final[tuple[SiteType, ...]] = (
    "government_service_center",
    "township_service_center",
)


def demo_catalogue(
    version: str = "2026.11", *, effective_from: datetime | None = None, seed: int = 2026
) -> CatalogueBundle:
    """317 services over the four categories; 65 offered at bank-agent branches too.

    Every service is offered at government service centers; township centers take most of
    them, subway stations and other public places the quick ones (lookups, certificates,
    payments); bank-agent branches take the financial services and payments first, then
    lookups, up to 65.
    """
    rng = random.Random(seed)
    services: list[Service] = []
    for slug, zh, en, dept_zh, dept_en in _BILLS:
        services.append(
            _service(
                f"bill-{slug}",
                Names(zh=f"{zh}缴纳", en=f"{en} payment"),
                "utility_payment",
                Names(zh=dept_zh, en=dept_en),
                fee=Fee(ref=f"bills/{slug}"),
                needs=["cash", "printer"],
            )
        )
    combos = [
        (matter, action)
        for matter in _MATTERS
        for action in (
            *_ACTIONS,
            *((_PAY,) if matter[0] in _PAYABLE else ()),
            *(_FINANCIAL if matter[0] in _FUNDS else ()),
        )
    ]
    # what a bank-agent branch needs must make it in: money first, then the rest at random
    rng.shuffle(combos)
    combos.sort(key=lambda c: c[1][3] not in ("financial_service", "utility_payment"))
    for (m_slug, m_zh, m_en, d_zh, d_en), (a_slug, a_zh, a_en, category, needs) in combos:
        if len(services) == SERVICES:
            break
        fee = None
        if category == "utility_payment":
            fee = Fee(ref=f"fees/{m_slug}-{a_slug}", amount_fen=rng.choice((500, 1000, 2000)))
        services.append(
            _service(
                f"{m_slug}-{a_slug}",
                Names(zh=f"{m_zh}{a_zh}", en=f"{m_en}: {a_en}"),
                category,
                Names(zh=d_zh, en=d_en),
                form=f"forms/{m_slug}-{a_slug}" if category == "approval" else None,
                fee=fee,
                needs=list(needs),
            )
        )
    if len(services) != SERVICES:
        raise AssertionError(f"only {len(services)} services can be made")
    services = _place(services, rng)
    return CatalogueBundle(
        version=version,
        effective_from=effective_from or datetime(2026, 12, 1, tzinfo=UTC),
        services=services,
    )


def _service(
    sid: str,
    name: Names,
    category: Category,
    department: Names,
    *,
    form: str | None = None,
    fee: Fee | None = None,
    needs: list[Need],
) -> Service:
    return Service(
        id=sid,
        name=name,
        category=category,
        site_types=list(_SITES_EVERYWHERE),
        department=department,
        form=form,
        fee=fee,
        needs=needs,
    )


def _place(services: list[Service], rng: random.Random) -> list[Service]:
    """Decide the site types of each service (see :func:`demo_catalogue`)."""
    order = {"financial_service": 0, "utility_payment": 1, "information_lookup": 2, "approval": 3}
    ranked = sorted(services, key=lambda s: (order[s.category], rng.random()))
    bank = {s.id for s in ranked[:BANK_AGENT_SERVICES]}
    placed: list[Service] = []
    for service in services:
        sites: list[SiteType] = ["government_service_center"]
        if service.category != "approval" or rng.random() < 0.7:
            sites.append("township_service_center")
        if service.category in ("information_lookup", "utility_payment"):
            sites += ["subway_station", "public_place"]
        if service.id in bank:
            sites.append("bank_agent_branch")
        placed.append(service.model_copy(update={"site_types": sites}))
    return placed
