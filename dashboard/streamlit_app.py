"""CXR Review dashboard: ``streamlit run dashboard``."""

import streamlit as st

st.set_page_config(page_title="CXR Review", page_icon=":material/radiology:", layout="wide")

pages = [st.Page("views/home.py", title="Overview", icon=":material/home:", default=True)]
st.navigation(pages).run()
