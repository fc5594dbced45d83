# Finds what the peft target needs: LibTorch (Debian's 1.13 or a pip PyTorch's 2.x; set Torch_DIR or
# CMAKE_PREFIX_PATH for the latter) and nlohmann_json.
if(NOT TARGET torch)
  find_package(Torch REQUIRED)
endif()
find_package(nlohmann_json 3.9 REQUIRED)

# Under add_subdirectory(), targets imported here would be visible only in this directory, but the
# consumer's targets link them through peft::peft: make them global.
if(NOT CMAKE_CURRENT_SOURCE_DIR STREQUAL CMAKE_SOURCE_DIR)
  get_directory_property(_peft_imported IMPORTED_TARGETS)
  foreach(_t IN LISTS _peft_imported)
    get_target_property(_global ${_t} IMPORTED_GLOBAL)
    if(NOT _global)
      set_target_properties(${_t} PROPERTIES IMPORTED_GLOBAL TRUE)
    endif()
  endforeach()
endif()
