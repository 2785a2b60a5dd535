"""wheel-python: a function whose requirement, newt-greeting, ships as a wheel in the bundle.

Input `{"name": "Ada"}` (or nothing); output `{"greeting": "Hello, Ada!", ...}`.
"""

import newt_greeting


def handler(event, context):
    name = (event or {}).get("name", "world")
    print(f"greeting {name} in call {context.call_id}")
    return {"greeting": newt_greeting.greet(name), "library": newt_greeting.__version__}
