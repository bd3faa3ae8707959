"""CXR Review dashboard: ``streamlit run dashboard``.

Signed out, every page's URL shows the sign-in screen and nothing else; after signing in, the same URL shows its
page (a bookmarked case included). Signed in, the pages are chosen by role at every rerun.
"""

import streamlit as st

from dashboard import auth, data, layout, reading, signin

WORKLIST = st.Page("views/worklist.py", title="Worklist", icon=":material/list:", url_path="", default=True)
CASE = st.Page("views/case.py", title="Case", icon=":material/radiology:", url_path="case", visibility="hidden")
FLAGGED = st.Page("views/flagged.py", title="Flagged", icon=":material/flag:", url_path="flagged")
MODELS = st.Page("views/models.py", title="Models", icon=":material/model_training:", url_path="models")
OVERVIEW = st.Page("views/overview.py", title="Overview", icon=":material/monitoring:", url_path="overview")
ACCOUNTS = st.Page("views/accounts.py", title="Accounts", icon=":material/group:", url_path="accounts")
ALL = (WORKLIST, CASE, FLAGGED, MODELS, OVERVIEW, ACCOUNTS)
# The default page's URL is the app's root; /worklist (typed, an old bookmark) leads there, filter and all, instead
# of Streamlit's "Page not found".
WORKLIST_PATH = "worklist"

account = None if data.schema_problem() else auth.current_account()
if account is None:
    navigation = st.navigation([*(st.Page(signin.render, title="Sign in", url_path=page.url_path,
                                          default=page is WORKLIST) for page in ALL),
                                st.Page(signin.render, title="Sign in", url_path=WORKLIST_PATH)], position="hidden")
else:
    # a reviewer who follows a link to Accounts is told why there is nothing for them there (the page itself
    # never runs for a reviewer)
    admins_only = st.Page(layout.admins_only, title="Accounts", url_path="accounts", visibility="hidden")
    navigation = st.navigation([*(page if page is not ACCOUNTS or account.is_admin else admins_only for page in ALL),
                                st.Page(layout.to_worklist, title="Worklist", url_path=WORKLIST_PATH,
                                        visibility="hidden")])
    if navigation.url_path != CASE.url_path:
        reading.leave_case(account)  # its clock stops and it is free for others
    layout.sidebar(account)
    layout.page_frame()
    if auth.idle_minutes():
        auth.idle_watchdog()
# One page config per run, once the page is known: the case page collapses the sidebar for the film's sake, every
# other page opens it again. (A second call in the same run, expanded then collapsed, sometimes reached the browser
# as no change at all and left the case page's sidebar open.) An emoji icon is drawn in the page itself; a Material
# icon would be fetched from Google by every browser.
st.set_page_config(page_title="CXR Review", page_icon="🩻", layout="wide",
                   initial_sidebar_state="collapsed" if navigation.url_path == CASE.url_path else "expanded")
st.session_state["pages"] = {"worklist": WORKLIST, "case": CASE, "flagged": FLAGGED}
navigation.run()
